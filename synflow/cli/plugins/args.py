"""``--plugin-args`` / ``--use-plugin`` parsing, and checking the arguments against Nipype."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synflow.cli.plugins.keys import plugin_keys, plugin_source
from synflow.cli.plugins.table import VALUE_CHECKS, PluginError, nipype_plugin_class

__all__ = ["load_plugin_file", "parse_plugin_args", "validate_plugin_args"]


def _load_text(text: str, source: str) -> Any:
    """Parse JSON, falling back to YAML (a superset) when PyYAML is installed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_exc:
        try:
            import yaml
        except ImportError:  # pragma: no cover - PyYAML comes with pybids/nipype
            raise PluginError(f"{source}: not valid JSON ({json_exc})") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PluginError(
                f"{source}: not valid JSON or YAML ({' '.join(str(exc).split())})"
            ) from None


def parse_plugin_args(
    text: str | Mapping[str, Any] | None, source: str = "--plugin-args"
) -> dict[str, Any]:
    """Parse ``--plugin-args``: a JSON (or YAML) mapping, or ``@FILE`` holding one.

    ``'{"sbatch_args": "-p short"}'``, ``'sbatch_args: -p short'`` and ``@args.json`` all
    give ``{"sbatch_args": "-p short"}``.  ``None`` or an empty string give ``{}``.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return _check_mapping(dict(text), source)
    if not isinstance(text, str):
        raise PluginError(f"{source}: expected a JSON mapping string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        return {}
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise PluginError(f"{source}: cannot read {str(path)!r}: {exc.strerror}") from None
        source = f"{source} {path}"
    value = _load_text(text, source)
    if value is None:
        return {}
    return _check_mapping(value, source)


def _check_mapping(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PluginError(
            f'{source}: expected a mapping such as \'{{"sbatch_args": "-p short"}}\', '
            f"got {type(value).__name__} {value!r}"
        )
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise PluginError(f"{source}: keys must be strings, got {bad!r}")
    return dict(value)


def load_plugin_file(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """Read a ``--use-plugin`` YAML/JSON file: ``{plugin: NAME, plugin_args: {...}}``.

    Returns ``(plugin_name_or_None, plugin_args)``; names are not validated here.
    """
    p = Path(path).expanduser()
    source = f"--use-plugin {p}"
    try:
        text = p.read_text()
    except OSError as exc:
        raise PluginError(f"{source}: cannot read the file: {exc.strerror}") from None
    data = _load_text(text, source)
    if data is None:
        raise PluginError(
            f"{source}: the file is empty; expected {{plugin: NAME, plugin_args: {{...}}}}"
        )
    data = _check_mapping(data, source)
    unknown = sorted(set(data) - {"plugin", "plugin_args"})
    if unknown:
        raise PluginError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected only 'plugin' and 'plugin_args'"
        )
    name = data.get("plugin")
    if name is not None and not isinstance(name, str):
        raise PluginError(f"{source}: 'plugin' must be a plugin name, got {name!r}")
    args = data.get("plugin_args")
    return name, ({} if args is None else _check_mapping(args, f"{source}: plugin_args"))


def _looks_like_path(text: str) -> bool:
    return (
        "\n" not in text
        and not text.lstrip().startswith("#")
        and ("/" in text or text.endswith((".sh", ".tpl", ".template", ".txt", ".sub")))
    )


def _check_keys(plugin: str, args: Mapping[str, Any]) -> None:
    """Every key is one Nipype's ``plugin`` reads, with a value of the right type."""
    known = plugin_keys(plugin) - {"status_callback"}
    for key, value in args.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listed = ", ".join(sorted(known)) or "none"
            raise PluginError(
                f"--plugin-args for {plugin}: unknown key {key!r} (Nipype would silently "
                f"ignore it).{hint} {plugin} reads: {listed}."
            )
        check, expected = VALUE_CHECKS.get(key, (lambda v: True, "any value"))
        if not check(value):
            raise PluginError(
                f"--plugin-args for {plugin}: {key!r} must be {expected}, got {value!r}"
            )


def _check_jobid_re(plugin: str, pattern: str) -> None:
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise PluginError(
            f"--plugin-args for {plugin}: jobid_re does not compile: {exc}"
        ) from None
    if groups < 1:
        raise PluginError(
            f"--plugin-args for {plugin}: jobid_re needs a group capturing "
            "the job id, e.g. 'Submitted batch job ([0-9]*)'"
        )


def validate_plugin_args(plugin: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``args`` against what the installed Nipype's ``plugin`` reads; return a copy.

    Rejects keys the plugin ignores (with a "did you mean"), values of the wrong type,
    template files that do not exist and ``jobid_re`` patterns that do not compile.
    """
    args = dict(args)
    if nipype_plugin_class(plugin) is None or not plugin_source(plugin):
        return args  # nothing to check against (no such class, or no source shipped)
    if "status_callback" in args:
        raise PluginError(
            f"--plugin-args for {plugin}: 'status_callback' needs a Python "
            "callable and cannot be given on the command line"
        )
    _check_keys(plugin, args)
    for key in ("template", "submit_template", "initial_specs", "override_specs"):
        value = args.get(key)
        if isinstance(value, str) and _looks_like_path(value) and not Path(value).is_file():
            raise PluginError(
                f"--plugin-args for {plugin}: {key} file {value!r} does not exist "
                "(give an existing file or the template text itself)"
            )
    if "jobid_re" in args:
        _check_jobid_re(plugin, args["jobid_re"])
    return args
