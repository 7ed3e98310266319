"""Moving prompts between softprompt and other libraries' files (PEFT adapters)."""

from .peft import export_peft, import_peft

__all__ = ["export_peft", "import_peft"]
