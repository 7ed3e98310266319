"""README.md and BENCHMARKS.md can be rerun as written: every bench script and results file they cite
is in the repository, every flag they pass to a bench script is one the script parses, and every
`softprompt ...` and `make ...` command names a command and options that exist."""

import re
import subprocess
from pathlib import Path

import pytest
import typer

from softprompt.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "BENCHMARKS.md")
SCRIPT = re.compile(r"\bbench/[\w-]+\.py\b")
RESULT = re.compile(r"\bbench/results/[\w.*{},-]+")
FLAG = re.compile(r"^(--[\w-]+|-[A-Za-z])(=.*)?$")
STOP = {"|", ";", "&&", ">", ">>", "2>&1", "#"}


def _sections(text: str):
    """(heading, body) for every `## ` section (the part before the first heading too)."""
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    yield "(top)", parts[0]
    yield from zip(parts[1::2], parts[2::2])


def _commands(text: str) -> list[str]:
    """Every shell line of the fenced code blocks (continuations joined, comments dropped) and every
    inline code span."""
    out = []
    for block in re.findall(r"^```(?:bash|sh)?\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    out += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return out


def _args_until_stop(tokens: list[str]) -> list[str]:
    for i, token in enumerate(tokens):
        if token in STOP or token.startswith(("#", ">")):
            return tokens[:i]
    return tokens


def _flags(tokens: list[str]) -> list[str]:
    return [m.group(1) for m in map(FLAG.match, _args_until_stop(tokens)) if m]


def _expand(pattern: str) -> list[str]:
    """Shell brace expansion of one {a,b,c} group (all the docs use)."""
    m = re.search(r"\{([^}]*)\}", pattern)
    if not m:
        return [pattern]
    return [pattern[: m.start()] + choice + pattern[m.end():] for choice in m.group(1).split(",")]


def _committed() -> set[str] | None:
    """Files git tracks here (None outside a git checkout: then existence is what counts)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(out.stdout.splitlines()) if out.returncode == 0 and (ROOT / ".git").exists() else None


def _cited_files_missing(doc: str, text: str, committed: set[str] | None) -> list[str]:
    missing = []
    cited = set(SCRIPT.findall(text)) | {c for r in RESULT.findall(text) for c in _expand(r.rstrip(".,"))}
    if doc == "BENCHMARKS.md":  # results named without their folder, e.g. `minilm_sst2_mean.json`
        spans = re.findall(r"`([\w.-]+\.(?:json|log|png|md))`", text)
        cited |= {f"bench/results/{s}" for s in spans if s not in DOCS}
    for command in _commands(text):
        cited |= {t for t in command.split() if t.startswith(("examples/", "scripts/", "src/"))}
    for path in sorted(cited):
        found = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(path))
        if committed is not None:
            found = [p for p in found if p in committed or any(c.startswith(p + "/") for c in committed)]
        if not found:
            missing.append(f"{doc}: {path} is cited but {'not committed' if committed is not None else 'missing'}")
    return missing


def _bench_flags_unknown(doc: str, text: str) -> list[str]:
    """Flags passed to a bench script that its source does not define. Inline `--flag ...` spans in
    a section count as flags of that section's scripts."""
    unknown = []
    for heading, body in _sections(text):
        scripts = sorted(set(SCRIPT.findall(body)))
        sources = {s: (ROOT / s).read_text() for s in scripts if (ROOT / s).exists()}
        for command in _commands(body):
            tokens = command.split()
            at = [i for i, t in enumerate(tokens) if SCRIPT.fullmatch(t)]
            if at:
                targets = [tokens[at[0]]]
                flags = _flags(tokens[at[0] + 1:])
            elif tokens and tokens[0].startswith("--") and sources:
                targets, flags = list(sources), _flags(tokens)
            else:
                continue
            for flag in flags:
                if not any(f'"{flag}"' in sources.get(t, "") for t in targets):
                    unknown.append(f"{doc} ({heading}): {' or '.join(targets)} has no {flag} (in `{command}`)")
    return unknown


def _cli_problems(doc: str, text: str) -> list[str]:
    """`softprompt CMD [SUB] ... --opt` must name a real command and options it takes."""
    root = typer.main.get_command(app)
    problems = []
    for command in _commands(text):
        tokens = _args_until_stop(command.split())
        if not tokens or tokens[0] != "softprompt":
            continue
        node, rest, path = root, tokens[1:], ["softprompt"]
        while rest and rest[0].startswith("-") and _has_option(node, rest[0]):
            rest = rest[1:]
        while hasattr(node, "commands") and rest and rest[0] != "...":
            if rest[0] not in node.commands:
                problems.append(f"{doc}: `{command}`: {' '.join(path)} has no command {rest[0]!r}")
                break
            path.append(rest[0])
            node, rest = node.commands[rest[0]], rest[1:]
        else:
            for flag in _flags(rest):
                if not _has_option(node, flag):
                    problems.append(f"{doc}: `{command}`: {' '.join(path)} has no option {flag}")
    return problems


def _has_option(node, flag: str) -> bool:
    flag = flag.split("=", 1)[0]
    return flag == "--help" or any(flag in p.opts or flag in p.secondary_opts for p in node.params)


def _make_problems(doc: str, text: str) -> list[str]:
    makefile = (ROOT / "Makefile").read_text() if (ROOT / "Makefile").exists() else ""
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    return [f"{doc}: `{c}`: the Makefile has no target {c.split()[1]!r}"
            for c in _commands(text) if c.split()[:1] == ["make"] and len(c.split()) > 1 and c.split()[1] not in targets]


@pytest.mark.parametrize("doc", DOCS)
def test_cited_scripts_and_results_are_committed(doc):
    text = (ROOT / doc).read_text()
    assert not (missing := _cited_files_missing(doc, text, _committed())), "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS)
def test_bench_commands_use_flags_their_scripts_define(doc):
    text = (ROOT / doc).read_text()
    assert not (unknown := _bench_flags_unknown(doc, text)), "\n".join(unknown)


@pytest.mark.parametrize("doc", DOCS)
def test_softprompt_and_make_commands_exist(doc):
    text = (ROOT / doc).read_text()
    assert not (problems := _cli_problems(doc, text) + _make_problems(doc, text)), "\n".join(problems)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A missing script or result, an unknown bench flag and an unknown command or option are all found."""
    text = ("## S\n\n```bash\npython bench/methods_smollm2.py --method ptuning --no-such-flag 3 "
            "--out bench/results/nowhere.json\nsoftprompt eval a.safetensors d.jsonl --no-such-option\n"
            "softprompt no-such-command\nmake nothing\n```\n\nThen `--another-unknown 2`, `bench/gone.py` and `nowhere.png`.\n")
    missing = _cited_files_missing("BENCHMARKS.md", text, None)
    assert {m.split(": ")[1].split(" ")[0] for m in missing} == {"bench/gone.py", "bench/results/nowhere.json",
                                                                 "bench/results/nowhere.png"}
    unknown = _bench_flags_unknown("BENCHMARKS.md", text)
    assert [u.split(" has no ")[1].split(" ")[0] for u in unknown] == ["--no-such-flag", "--another-unknown"]
    problems = _cli_problems("README.md", text) + _make_problems("README.md", text)
    assert len(problems) == 3
    assert "no option --no-such-option" in problems[0] and "no command 'no-such-command'" in problems[1]
    assert "no target 'nothing'" in problems[2]
