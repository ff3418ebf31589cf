"""Run the notebook series headless with papermill (``make run``) or prepare it for nbval (``make test``).

Parameters per notebook live in ``configs/notebooks/<stem>.yaml`` with one section per profile
(``embedded`` for the main job, ``smoke`` for the tests, ``paper`` for the paper setting). The run
report (``runs/report.md`` and ``runs/report.json``) lists which notebooks ran, how long they took and
the key numbers they recorded with :func:`nifi_lib.experiments.report.record_numbers`.

Parameters shared by every notebook of a profile live in ``configs/notebooks/_profiles.yaml`` (today:
``figures_dir``, where the figures go; ``{out}`` stands for the ``--out`` folder). They are injected only into
notebooks whose parameters cell declares them, and ``$NIFI_FIGURES_DIR`` is set to the same folder while a
notebook executes (for any figure saved without an explicit folder). So ``make run`` (embedded) refreshes
``figures/`` and ``make test`` (smoke, ``--out runs/nbval``) writes ``runs/nbval/figures``, never a tracked path.

Parameters from the command line (``--param NAME=VALUE``, repeatable; ``--params FILE.yaml``, a mapping of the
same) win over both files. Values are parsed as YAML (``2``, ``null``, ``[0.0, 0.7]``, ``{train: {resolution:
32}}``; ``{out}`` is replaced as above). Like ``_profiles.yaml`` they go to every notebook whose parameters cell
declares the name; ``NB:NAME=VALUE`` limits one to the notebooks whose name starts with ``NB`` (e.g.
``05:max_steps=2``). A name that no selected notebook declares is an error (a typo would silently keep the
profile's value). ``docs/paper_mode.md`` lists the paper profile's parameters per notebook.

While a notebook executes, one line per code cell is printed (``[embedded] 05_... cell 7/23 done in 4.2 s
(42 s so far)``): readable in a log, no progress-bar control characters.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from ..errors import NifiError
from ..io.atomic import atomic_write_json, atomic_write_text
from ..paths import CONFIGS_DIR, ENV_FIGURES_DIR, NOTEBOOKS_DIR, REPO_ROOT, repo_path
from .report import NUMBERS_DIR

PROFILES = ("embedded", "smoke", "paper")
PROFILE_FILE = "_profiles.yaml"      # parameters shared by every notebook of a profile (configs/notebooks/)


class NotebookRunError(NifiError):
    pass


def list_notebooks(folder: Path = NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    nbs = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.stem.startswith(o) for o in only)]
    return nbs


def notebook_parameters(stem: str, profile: str, params_dir: Path = CONFIGS_DIR / "notebooks") -> dict:
    """Parameters of notebook ``stem`` for ``profile`` (missing file or section: the notebook's defaults)."""
    if profile not in PROFILES:
        raise NotebookRunError(f"unknown profile '{profile}' (use one of {', '.join(PROFILES)})")
    path = params_dir / f"{stem}.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or any(k not in PROFILES for k in data):
        raise NotebookRunError(f"{path}: top-level keys must be profiles ({', '.join(PROFILES)})")
    section = data.get(profile) or {}
    if not isinstance(section, dict):
        raise NotebookRunError(f"{path}: section '{profile}' must be a mapping of parameter: value")
    return section


def _out_token(out_dir: Path) -> str:
    """``out_dir`` as written into parameters: repo-relative when inside the repo (portable), else absolute."""
    out_dir = repo_path(out_dir)
    return out_dir.relative_to(REPO_ROOT).as_posix() if out_dir.is_relative_to(REPO_ROOT) else str(out_dir)


def profile_parameters(profile: str, out_dir: str | Path, params_dir: Path = CONFIGS_DIR / "notebooks") -> dict:
    """The parameters every notebook of ``profile`` shares (``_profiles.yaml``), ``{out}`` replaced by ``out_dir``."""
    if profile not in PROFILES:
        raise NotebookRunError(f"unknown profile '{profile}' (use one of {', '.join(PROFILES)})")
    path = params_dir / PROFILE_FILE
    data = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    if not isinstance(data, dict) or any(k not in PROFILES for k in data):
        raise NotebookRunError(f"{path}: top-level keys must be profiles ({', '.join(PROFILES)})")
    section = data.get(profile) or {}
    if not isinstance(section, dict):
        raise NotebookRunError(f"{path}: section '{profile}' must be a mapping of parameter: value")
    out = _out_token(Path(out_dir))
    return {k: (v.replace("{out}", out) if isinstance(v, str) else v) for k, v in section.items()}


def declared_parameters(nb: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell."""
    import papermill as pm

    return set(pm.inspect_notebook(str(nb)))


def _substitute_out(value, out: str):
    """``{out}`` replaced by ``out`` in a string value (recursively in lists and mappings)."""
    if isinstance(value, str):
        return value.replace("{out}", out)
    if isinstance(value, list):
        return [_substitute_out(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_out(v, out) for k, v in value.items()}
    return value


def parse_param(text: str) -> tuple[str | None, str, object]:
    """``[NB:]NAME=VALUE`` -> ``(notebook prefix or None, name, YAML-parsed value)``."""
    key, sep, raw = text.partition("=")
    nb, _, name = key.strip().rpartition(":")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise NotebookRunError(f"--param {text!r}: expected NAME=VALUE or NB:NAME=VALUE (e.g. ckpt=runs/x/best.pt, "
                               "05:max_steps=2)")
    if raw.strip().startswith("{out}"):
        return (nb.strip() or None), name, raw.strip()   # a path under --out: a string ("{out}" is not YAML)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        if "{out}" in raw:
            return (nb.strip() or None), name, raw.strip()
        raise NotebookRunError(f"--param {text!r}: the value is not valid YAML ({e})") from e
    return (nb.strip() or None), name, value


def command_line_parameters(params: list[str] | None = None, params_file: str | Path | None = None) -> dict:
    """``{(notebook prefix or None, name): value}`` from ``--params FILE.yaml`` (a mapping NAME: VALUE, keys may
    be ``NB:NAME``), then ``--param`` (which wins)."""
    out: dict = {}
    if params_file:
        path = repo_path(params_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise NotebookRunError(f"--params {params_file}: cannot read a YAML mapping ({e})") from e
        if not isinstance(data, dict):
            raise NotebookRunError(f"--params {params_file}: expected a mapping of NAME: VALUE")
        for k, v in data.items():
            nb, _, name = str(k).rpartition(":")
            if not name.isidentifier():
                raise NotebookRunError(f"--params {params_file}: '{k}' is not a parameter name (NAME or NB:NAME)")
            out[(nb or None, name)] = v
    for text in params or ():
        nb, name, value = parse_param(text)
        out[(nb, name)] = value
    return out


def check_command_line_parameters(extra: dict, notebooks: list[Path]) -> None:
    """Every ``--param`` is declared by at least one of ``notebooks`` (those its prefix selects)."""
    declared = {nb.stem: declared_parameters(nb) for nb in notebooks} if extra else {}
    for (prefix, name) in extra:
        if not any(name in names for stem, names in declared.items() if not prefix or stem.startswith(prefix)):
            where = f"of the selected notebooks {prefix}*" if prefix else "of the selected notebooks"
            raise NotebookRunError(f"--param {(prefix + ':') if prefix else ''}{name}: none {where} declares "
                                   f"'{name}' in its parameters cell (see docs/paper_mode.md)")


def prepared_parameters(nb: Path, profile: str, out_dir: str | Path,
                        params_dir: Path = CONFIGS_DIR / "notebooks", extra: dict | None = None) -> dict:
    """What is injected into ``nb``: the profile's shared parameters that the notebook declares, then the
    notebook's own section (which wins), then the command line's ``extra`` (:func:`command_line_parameters`)
    that the notebook declares and whose notebook prefix (if any) matches (which win over both)."""
    shared = profile_parameters(profile, out_dir, params_dir)
    declared = declared_parameters(nb) if (shared or extra) else set()
    out = _out_token(Path(out_dir))
    extra = extra or {}
    general = {name: v for (prefix, name), v in extra.items() if prefix is None}
    specific = {name: v for (prefix, name), v in extra.items() if prefix is not None and nb.stem.startswith(prefix)}
    given = {name: _substitute_out(v, out) for name, v in {**general, **specific}.items() if name in declared}
    return {**{k: v for k, v in shared.items() if k in declared},
            **notebook_parameters(nb.stem, profile, params_dir), **given}


def profile_figures_dir(profile: str, out_dir: str | Path, params_dir: Path = CONFIGS_DIR / "notebooks") -> Path | None:
    """The profile's figure folder (absolute), or None when ``_profiles.yaml`` names none."""
    v = profile_parameters(profile, out_dir, params_dir).get("figures_dir")
    return repo_path(v) if v else None


def cell_progress(label: str, stream=None):
    """A ``NotebookExecutionManager.cell_complete`` wrapper factory: prints one line per finished code cell."""
    def attach(nb_man) -> None:
        code_idx = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
        n, t_start, t_cell = len(code_idx), time.perf_counter(), {}
        orig_start, orig_complete = nb_man.cell_start, nb_man.cell_complete

        def cell_start(cell, cell_index=None, **kw):
            t_cell[cell_index] = time.perf_counter()
            return orig_start(cell, cell_index, **kw)

        def cell_complete(cell, cell_index=None, **kw):
            res = orig_complete(cell, cell_index, **kw)
            if cell.cell_type == "code" and cell_index in code_idx:
                now = time.perf_counter()
                failed = cell.get("metadata", {}).get("papermill", {}).get("status") == "failed"
                print(f"{label} cell {code_idx.index(cell_index) + 1}/{n} {'FAILED' if failed else 'done'} in "
                      f"{now - t_cell.get(cell_index, now):.1f} s ({now - t_start:.0f} s so far)",
                      file=stream or sys.stdout, flush=True)
            return res

        nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
    return attach


def _progress_engine():
    """papermill's nbclient engine plus :func:`cell_progress` (registered once as ``nifi-progress``)."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, nifi_progress=None, **kwargs):
            if nifi_progress is not None:
                nifi_progress(nb_man)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    if "nifi-progress" not in papermill_engines._engines:
        papermill_engines.register("nifi-progress", ProgressEngine)
    return "nifi-progress"


def run_notebooks(profile: str, out_dir: Path, prepare_only: bool = False, only: list[str] | None = None,
                  kernel: str = "python3", report: bool = True, cli_params: dict | None = None) -> list[dict]:
    """Execute (or only parameterise) every notebook in order; return one record per notebook. ``cli_params``:
    command-line parameters (:func:`command_line_parameters`), injected last."""
    import papermill as pm

    out_dir = repo_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = list_notebooks(only=only)
    if not notebooks:
        raise NotebookRunError(f"no notebooks found in {NOTEBOOKS_DIR}")
    check_command_line_parameters(cli_params or {}, notebooks)
    records = []
    fig_dir = profile_figures_dir(profile, out_dir)
    if (cli_params or {}).get((None, "figures_dir")):   # --param figures_dir=...: $NIFI_FIGURES_DIR follows it
        fig_dir = repo_path(_substitute_out(cli_params[(None, "figures_dir")], _out_token(out_dir)))
    saved_env = os.environ.get(ENV_FIGURES_DIR)
    engine = _progress_engine()
    for nb in notebooks:
        params = prepared_parameters(nb, profile, out_dir, extra=cli_params)
        target = out_dir / nb.name
        t0 = time.perf_counter()
        status, error = "ok", None
        print(f"[{profile}] {'preparing' if prepare_only else 'running'} {nb.name} {params or ''}", flush=True)
        extra = {} if prepare_only else {"engine_name": engine, "nifi_progress": cell_progress(f"[{profile}] {nb.stem}")}
        try:
            if fig_dir is not None:   # the kernel inherits it: figures saved without a folder land there too
                os.environ[ENV_FIGURES_DIR] = str(fig_dir)
            pm.execute_notebook(str(nb), str(target), parameters=params, kernel_name=kernel,
                                prepare_only=prepare_only, cwd=str(REPO_ROOT), progress_bar=False,
                                log_output=False, **extra)
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            status, error = "failed", f"{e.__class__.__name__}: {str(e)[:2000]}"
        finally:
            if saved_env is None:
                os.environ.pop(ENV_FIGURES_DIR, None)
            else:
                os.environ[ENV_FIGURES_DIR] = saved_env
        seconds = time.perf_counter() - t0
        numbers_file = NUMBERS_DIR / f"{nb.stem}.json"
        numbers = json.loads(numbers_file.read_text()) if numbers_file.is_file() and not prepare_only else {}
        records.append({"notebook": nb.name, "status": status, "seconds": round(seconds, 1),
                        "parameters": params, "output": str(target.relative_to(REPO_ROOT)) if target.is_relative_to(REPO_ROOT) else str(target),
                        "numbers": numbers, "error": error})
        print(f"    {status} in {seconds:.1f}s", flush=True)
        if status != "ok":
            print(error, file=sys.stderr)
            break
    if report and not prepare_only:
        write_report(merge_records(records, profile, out_dir.parent) if only else records, profile, out_dir.parent)
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise NotebookRunError(f"{failed[0]['notebook']} failed; executed copy in {failed[0]['output']}")
    return records


def merge_records(records: list[dict], profile: str, folder: Path) -> list[dict]:
    """A partial run (``--only``) updates its notebooks' rows of an existing report of the same profile
    and keeps the others, so rerunning one notebook does not erase the rest of the report."""
    path = folder / "report.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        old = {}
    if old.get("profile") != profile:
        return records
    by_name = {r["notebook"]: r for r in old.get("notebooks", []) if isinstance(r, dict) and "notebook" in r}
    by_name.update({r["notebook"]: r for r in records})
    return [by_name[k] for k in sorted(by_name)]


def write_report(records: list[dict], profile: str, folder: Path) -> Path:
    """runs/report.json and a short runs/report.md: which notebooks ran, how long, key numbers."""
    total = sum(r["seconds"] for r in records)
    atomic_write_json(folder / "report.json", {"profile": profile, "total_seconds": round(total, 1),
                                               "notebooks": records})
    lines = [f"# NiFi run report ({profile} profile)", "", f"Total: {total:.0f} s", "",
             "| notebook | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['status']} | {r['seconds']:.1f} |" for r in records]
    for r in records:
        if r["numbers"]:
            lines += ["", f"## {r['notebook']}", ""]
            lines += [f"- {k}: {_fmt(v)}" for k, v in r["numbers"].items()]
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"report: {path}")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def _cmd(args: argparse.Namespace) -> int:
    extra = command_line_parameters(args.param, args.params)
    run_notebooks(args.profile, Path(args.out), prepare_only=args.prepare_only, only=args.only, cli_params=extra)
    return 0


def register(sub) -> None:
    p = sub.add_parser("run-notebooks", help="execute the notebook series with papermill (make run)")
    p.add_argument("--profile", default="embedded", choices=PROFILES)
    p.add_argument("--out", default="runs/notebooks", help="folder for the executed copies")
    p.add_argument("--prepare-only", action="store_true", help="only inject parameters (for nbval)")
    p.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 00 03")
    p.add_argument("--param", action="append", metavar="[NB:]NAME=VALUE",
                   help="set a notebook parameter (repeatable; VALUE is YAML: 2, null, [a, b], {k: v}; '{out}' = "
                        "--out) in every notebook that declares NAME, or only in notebooks NB* with NB:NAME=VALUE; "
                        "wins over configs/notebooks/ (paper-mode names: docs/paper_mode.md)")
    p.add_argument("--params", metavar="FILE.yaml",
                   help="a YAML mapping NAME: VALUE (or NB:NAME: VALUE) applied like --param (--param wins)")
    p.set_defaults(func=_cmd)
