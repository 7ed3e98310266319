"""Replicas on Ray Serve: copies of `softprompt serve` behind Ray's HTTP proxy (`pip install 'softprompt[ray]'`).

`app` is the application builder for `serve run softprompt.serve.ray:app key=value ...` or a Serve
config's `import_path` (its `args`); `serve_replicas` is `softprompt serve --replicas N`: a local Ray,
the application from a Serve config, until SIGTERM or Ctrl-C. Each replica builds the one-process
server (serve/app.py) on its own base model and engine (`@serve.ingress()` with the app built per
replica); Ray's options set the rest (`num_replicas`, `autoscaling_config`, `ray_actor_options`'s
num_cpus/num_gpus, `max_ongoing_requests`).

The set of prompts is the deployment's `user_config`: {"prompts": {name: {"path": file} |
{"library": ref}}, "base": serve the base model}. Ray hands it to every replica, those it starts
later included, through `reconfigure`. An admin load or unload on one replica is checked there
first, then applied as a Serve config with the new user_config and written to the set file (the
same JSON, beside the prompts, read again when the application is built): the Serve
controller reconfigures every replica in place (same code, no restart), and the admin answer
waits until it has. That needs an application deployed from a Serve config (`softprompt serve
--replicas`, `serve run CONFIG.yaml`, `serve deploy`); one deployed from Python keeps its prompts
(the admin routes answer 409).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ray import serve

from ..errors import ArtifactError, ConfigError
from .errors import APIError
from .registry import PromptRegistry, read_prompt_list
from .state import ServeSettings

DEPLOYMENT = "softprompt"  # the deployment's name (and the application's, from the command line)
SET_FILE = "softprompt-served.json"  # the prompt set file's name, in the first prompt directory
HEADER = "x-softprompt-replica"  # names the replica that answered, on every answer
ENGINE_KEYS = ("max_queue", "max_batch_rows", "max_running")
SETTING_KEYS = {"max_tokens": int, "timeout": float, "max_inputs": int}
ARG_KEYS = {"model", "dtype", "quantize", "library", "config", "prompts", "from_library", "prompt_dir", "prompt_set",
            "serve_base", "threads", "admin_token_file", *ENGINE_KEYS, *SETTING_KEYS}
log = logging.getLogger("softprompt.serve.ray")


# ---- the application: arguments, the prompt set, the builder -------------------------------------


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _number(value: Any, key: str, kind: type):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return number


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def read_prompt_set(path: str | Path) -> dict:
    """A prompt set file (or any user_config): {"prompts": {name: {"path"} | {"library"}}, "base": bool}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable prompt set file ({exc})") from None
    return check_prompt_set(data, str(path))


def check_prompt_set(data: Any, where: str = "user_config") -> dict:
    """The prompt set, checked: a mapping of prompts, each one file path or one library reference."""
    if not isinstance(data, Mapping) or not isinstance(data.get("prompts", {}), Mapping) or set(data) - {"prompts", "base"}:
        raise ConfigError(f'{where}: expected {{"prompts": {{name: {{"path": file}} or {{"library": ref}}}}, "base": bool}}')
    prompts = {}
    for name, spec in data.get("prompts", {}).items():
        if not (isinstance(spec, Mapping) and len(spec) == 1 and set(spec) <= {"path", "library"}
                and isinstance(next(iter(spec.values())), str)):
            raise ConfigError(f"{where}: prompt {name!r} must be {{\"path\": file}} or {{\"library\": ref}}")
        prompts[str(name)] = dict(spec)
    return {"prompts": prompts, "base": _flag(data.get("base", True), f"{where}: base")}


def write_prompt_set(path: str | Path, prompt_set: dict) -> None:
    """Write the set file whole or not at all (a crash midway leaves the previous one)."""
    path = Path(path)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_text(json.dumps(prompt_set, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(part, path)


def resolve(args: Mapping[str, Any] | None, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """(the replicas' spec, the prompt set) from the builder's arguments: the keys of `softprompt
    serve`'s options (model, dtype, quantize, library, config: a --config YAML, prompts: {name: path |
    {library: ref}}, from_library: refs, prompt_dir, prompt_set: the set file, serve_base, threads,
    admin_token_file, max_queue, max_batch_rows, max_running, max_tokens, timeout, max_inputs). The
    set file's prompts, when it exists, come back under those named here (a name given here wins)."""
    from ..core import PromptArtifact
    from . import demo_prompt

    args = dict(args or {})
    unknown = set(args) - ARG_KEYS
    if unknown:
        raise ConfigError(f"unknown argument(s) {sorted(unknown)} (known: {', '.join(sorted(ARG_KEYS))})")
    listed = read_prompt_list(args["config"]) if args.get("config") else {}
    named: dict[str, dict] = {}
    for name, spec in {**listed.get("prompts", {}), **(args.get("prompts") or {})}.items():
        named[name] = {"library": spec["library"]} if isinstance(spec, Mapping) else {"path": str(spec)}
    for ref in _listed(args.get("from_library")):
        ref, _, name = ref.partition("=")
        named[name or ref.replace("@", ":").split(":")[0]] = {"library": ref}
    for name, spec in named.items():  # before any replica loads a model: a typo costs no waiting
        if "path" in spec:
            if not Path(spec["path"]).is_file():
                raise ArtifactError(f"{spec['path']}: prompt file not found (for prompt {name!r})")
            spec["path"] = str(Path(spec["path"]).resolve())
    library = args.get("library") or listed.get("library")
    dirs = [Path(d) for d in _listed(args.get("prompt_dir")) + listed.get("prompt_dir", [])]
    for folder in dirs:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: prompt directory not found (prompt_dir)")
    dirs = dirs or [Path(s["path"]).parent for s in named.values() if "path" in s]
    set_file = args.get("prompt_set") or next(
        (str(Path(d) / SET_FILE) for d in [*dirs, *([library] if library else [])]), None)
    serve_base = _flag(args.get("serve_base", True), "serve_base")
    prompt_set = {"prompts": {}, "base": serve_base}
    if set_file is not None and Path(set_file).is_file():
        kept = read_prompt_set(set_file)
        prompt_set = {"prompts": kept["prompts"], "base": serve_base and kept["base"]}
        log(f"prompt set from {set_file}: {', '.join(kept['prompts']) or 'no prompts'}")
    prompt_set["prompts"].update(named)
    if not prompt_set["prompts"]:
        path = str(demo_prompt(log))
        prompt_set["prompts"]["sentiment"] = {"path": path}
        dirs = dirs or [Path(path).parent]
    model = args.get("model") or listed.get("model")
    if model is None:
        first = next((s["path"] for s in prompt_set["prompts"].values() if "path" in s), None)
        if first is not None:
            model = PromptArtifact.load(first).meta.get("base_model", {}).get("name")
    token_file = args.get("admin_token_file")
    if token_file is not None and not Path(token_file).is_file():
        raise ConfigError(f"{token_file}: admin token file not found")
    spec = {
        "model": model or "smollm2-135m",
        "dtype": args.get("dtype") or listed.get("dtype"),
        "quantize": args.get("quantize") or listed.get("quantize"),
        "library": str(Path(library).resolve()) if library else None,
        "prompt_dirs": [str(d.resolve()) for d in dirs],
        "prompt_set": str(Path(set_file).resolve()) if set_file else None,
        "threads": _number(args.get("threads", 1), "threads", int),
        "admin_token_file": str(Path(token_file).resolve()) if token_file else None,
        "engine": {k: _number(args[k], k, int) for k in ENGINE_KEYS if args.get(k) is not None},
        "settings": {k: _number(args[k], k, kind) for k, kind in SETTING_KEYS.items() if args.get(k) is not None},
    }
    return spec, prompt_set


def app(args: dict) -> serve.Application:
    """The application (one deployment, one replica unless the Serve config says more) for `serve run
    softprompt.serve.ray:app key=value ...` or a Serve config's import_path; args: see `resolve`."""
    spec, prompt_set = resolve(args, log.info)
    return build(spec, prompt_set)


def build(spec: dict, prompt_set: dict, **options) -> serve.Application:
    """The application for a resolved spec and prompt set; options: Ray Serve's deployment options
    (num_replicas, autoscaling_config, ray_actor_options, max_ongoing_requests, ...)."""
    options = {"ray_actor_options": {"num_cpus": spec["threads"]}, **options}
    return SoftpromptServer.options(user_config=prompt_set, **options).bind(spec)


# ---- one replica ------------------------------------------------------------------------------


class ReplicaHeader:
    """ASGI middleware: every answer names the replica that gave it."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


# max_ongoing_requests: requests one replica takes at once; its engine batches them (Ray's default of 5
# would hold the batches to 5 rows).
@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=64, graceful_shutdown_timeout_s=30)
@serve.ingress()
class SoftpromptServer:
    """One replica: the one-process server's app over a base model and engine of its own."""

    def __init__(self, spec: dict):
        import torch

        from ..api import load_model
        from ..configs import ModelConfig
        from ..engine import Engine
        from ..models.precision import check_dtype
        from ..models.quantize import check_quantize

        torch.set_num_threads(spec["threads"])
        self.spec = spec
        self.context = serve.get_replica_context()
        self.replica = self.context.replica_tag
        base = load_model(ModelConfig(name=spec["model"], dtype=check_dtype(spec["dtype"] or "auto", "dtype"),
                                      quantize=check_quantize(spec["quantize"], "quantize")))
        self.registry = PromptRegistry(base, Engine(base, **spec["engine"]), spec["library"], spec["prompt_dirs"])
        self.loaded: dict[str, dict] = {}  # name -> the set entry it was loaded from
        self.prompt_set: dict = {"prompts": {}, "base": False}  # the last set Ray gave this replica
        self.state = None  # the app's ServerState, once built
        self.lock = threading.Lock()  # one change of the prompts at a time

    def __serve_build_asgi_app__(self):
        from .app import create_app

        token = os.environ.get("SOFTPROMPT_ADMIN_TOKEN")
        if self.spec["admin_token_file"]:
            token = Path(self.spec["admin_token_file"]).read_text(encoding="utf-8").strip() or None
        fastapi_app = create_app(self.registry, ServeSettings(admin_token=token, **self.spec["settings"]))
        self.state = fastapi_app.state.server
        self.state.metrics.const_labels = {"replica": self.replica}
        self.state.share_prompts = self.share
        self.state.metrics.prompts_changed()
        fastapi_app.add_middleware(ReplicaHeader, replica=self.replica)
        return fastapi_app

    async def reconfigure(self, user_config: dict) -> None:
        """Ray's call with the deployment's user_config: serve exactly that set."""
        prompt_set = check_prompt_set(user_config)
        await asyncio.to_thread(self._apply, prompt_set)

    def _apply(self, prompt_set: dict) -> None:
        with self.lock:
            registry = self.registry
            for name in [n for n in self.loaded if n not in prompt_set["prompts"]]:
                self.loaded.pop(name)
                if name in registry.names():
                    registry.remove(name)
            for name, entry in prompt_set["prompts"].items():
                if self.loaded.get(name) == entry:
                    continue
                try:  # one prompt that fails here (a file this node cannot read) must not stop the others
                    if "path" in entry:
                        registry.add_file(name, entry["path"])
                    else:
                        registry.add_library(entry["library"], name)
                    self.loaded[name] = entry
                except Exception as exc:  # noqa: BLE001 - logged with the replica, the set stays as given
                    log.error("replica %s: prompt %r (%s) not loaded: %s", self.replica, name, entry, exc)
            base = registry.base.name
            if prompt_set["base"] and base not in registry.names() and base not in prompt_set["prompts"]:
                registry.add_base()
            elif not prompt_set["base"] and base in registry.names() and base not in self.loaded:
                registry.remove(base)
            self.prompt_set = prompt_set
            if self.state is not None:
                self.state.metrics.prompts_changed()

    async def share(self, changes: dict[str, dict | None]) -> None:
        """An admin change this replica made (name: its set entry, or None: unloaded) made the set of
        every replica: the set file, then the Serve config with the new user_config; returns when the
        controller reports every replica reconfigured."""
        try:
            await asyncio.to_thread(self._redeploy, changes)
        except Exception as exc:
            await asyncio.to_thread(self._apply, self.prompt_set)  # back to what every replica serves
            if isinstance(exc, APIError):
                raise
            log.exception("replica %s: the new prompt set was not deployed", self.replica)
            raise APIError(503, f"the replicas could not be reconfigured ({type(exc).__name__})",
                           "service_unavailable") from None

    def _redeploy(self, changes: dict[str, dict | None]) -> None:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        with self.lock:  # this replica made the change already: Ray's reconfigure leaves it as it is
            for name, entry in changes.items():
                if entry is None:
                    self.loaded.pop(name, None)
                else:
                    self.loaded[name] = entry
        client = _get_global_client()
        details = client.get_serve_details()  # what `serve config` shows: each application's Serve config
        app_name, deployment = self.context.app_name, self.context.deployment
        config = (details.get("applications", {}).get(app_name) or {}).get("deployed_app_config")
        if config is None:
            raise APIError(409, "this application was deployed from Python (serve.run), so its prompts are fixed: "
                                "deploy it from a Serve config (softprompt serve --replicas, serve run CONFIG.yaml, "
                                "serve deploy) to load and unload prompts while serving", "conflict")
        deployments = config.setdefault("deployments", [])
        mine = next((d for d in deployments if d.get("name") == deployment), None)
        if mine is None:
            mine = {"name": deployment}
            deployments.append(mine)
        current = check_prompt_set(mine["user_config"]) if mine.get("user_config") else dict(self.prompt_set)
        prompts = dict(current["prompts"])
        base = current["base"]
        for name, entry in changes.items():
            if entry is not None:
                prompts[name] = entry
            elif name in prompts:
                prompts.pop(name)
            elif name == self.registry.base.name:
                base = False
        mine["user_config"] = new = {"prompts": prompts, "base": base}
        others = [a["deployed_app_config"] for name, a in details.get("applications", {}).items()
                  if name != app_name and a.get("deployed_app_config")]  # a config names them all, or drops them
        target = {"applications": [config, *others]}
        if details.get("target_capacity") is not None:
            target["target_capacity"] = details["target_capacity"]
        client.deploy_apps(ServeDeploySchema.model_validate(target))
        if self.spec["prompt_set"]:  # once the controller has it: a restart comes back with what it serves
            write_prompt_set(self.spec["prompt_set"], new)
        wait_reconfigured(app_name, deployment, timeout=self.state.settings.timeout if self.state else 120.0)


def wait_reconfigured(app_name: str, deployment: str, timeout: float) -> None:
    """Return once the deployment is healthy again after a change of its config: the controller marks
    it UPDATING within a control-loop pass (0.1 s) and HEALTHY when every replica runs the new config."""
    start = time.monotonic()
    updating = False
    while True:
        status = serve.status().applications[app_name].deployments[deployment].status
        if status == "HEALTHY" and (updating or time.monotonic() - start > 1.0):
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise APIError(503, f"the replicas did not take the new prompt set ({status})", "service_unavailable")
        updating = updating or status != "HEALTHY"
        if time.monotonic() - start > timeout:
            raise APIError(503, f"the replicas did not take the new prompt set within {timeout:g} s", "timeout")
        time.sleep(0.05)


# ---- softprompt serve --replicas N --------------------------------------------------------------


def serve_replicas(args: dict, *, replicas: int, host: str = "127.0.0.1", port: int = 8000, gpus: float = 0,
                   log: Callable[[str], None] = print) -> None:
    """Start a local Ray (this machine only, no dashboard) and the application from a Serve config with
    `replicas` replicas behind Ray's HTTP proxy on host:port; serve until SIGTERM or Ctrl-C, then stop
    Serve and Ray. args: the builder's (see `resolve`), paths made absolute."""
    import ray
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    spec, prompt_set = resolve(args, log)  # a wrong file or directory fails before Ray starts
    # The application's arguments as resolved here (absolute paths, the --config file's entries, the
    # demo prompt trained once), so that building it on a Ray worker reads nothing relative.
    args = {"model": spec["model"], "dtype": spec["dtype"], "quantize": spec["quantize"], "library": spec["library"],
            "prompt_dir": spec["prompt_dirs"], "prompt_set": spec["prompt_set"], "threads": spec["threads"],
            "admin_token_file": spec["admin_token_file"], "serve_base": args.get("serve_base", True),
            "prompts": {n: e.get("path") or {"library": e["library"]} for n, e in prompt_set["prompts"].items()},
            **spec["engine"], **spec["settings"]}
    args = {k: v for k, v in args.items() if v is not None}
    threads = spec["threads"]
    # A Ray of its own on this machine, no dashboard, a CPU per torch thread of each replica. Ray's HTTP
    # proxy binds host; Ray's own services listen on its node address (token authentication on).
    ray.init(address="local", include_dashboard=False, num_cpus=replicas * threads,
             num_gpus=math.ceil(gpus * replicas) if gpus else None)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port})
        actor_options = {"num_cpus": threads, **({"num_gpus": gpus} if gpus else {})}
        config = {"applications": [{
            "name": DEPLOYMENT, "route_prefix": "/", "import_path": "softprompt.serve.ray:app", "args": args,
            "deployments": [{"name": DEPLOYMENT, "num_replicas": replicas, "ray_actor_options": actor_options}]}]}
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        while not stop.is_set():
            status = serve.status().applications.get(DEPLOYMENT)
            if status is not None and status.status == "RUNNING":
                break
            if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise ConfigError(f"Ray Serve could not start the replicas: {status.message.strip()[-2000:]}")
            time.sleep(0.2)
        if not stop.is_set():
            log(f"serving {', '.join(prompt_set['prompts'])} on {spec['model']} with {replicas} replica(s) "
                f"({threads} thread(s) each) at http://{host}:{port}/; prompt set file: {spec['prompt_set'] or 'none'}")
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
