"""The package's shape, checked from its source: stages sit on libraries, never the other way round; no import
cycles; and dvc.yaml lists, for every stage, each file of the code that stage runs, so a change to any of it
reruns the stage (hand-kept deps drift: a test derives them)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import yaml

from emi.config import UNTRACKED, leaf_keys
from emi.paths import Layout

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "emi"
STAGES = ("download", "transcribe", "extract", "stage1", "augment", "stage2", "ablate", "evaluate")
# where each stage's code starts: the CLI command only parses options and calls this module's function
STAGE_MODULE = {s: f"emi.stages.{s}" for s in STAGES}
ENTRY_POINTS = ("emi.cli", "emi.bench", "emi.stages")  # may import stages; nothing else may


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every emi module ``name`` imports, at module level or inside functions (a lazy import still runs when the
    stage does), resolving ``from pkg import mod`` to the submodule where there is one."""
    path = module_file(name)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "emi" and module_file(target) is not None:
                found.add(target)
    return frozenset(found - {name})


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        todo += imports_of(current)
    return seen


def code_files(name: str) -> set[str]:
    """Files a stage runs or ships: its modules (empty ``__init__`` files aside), the data files beside them, and
    sibling files a module names as ``Path(__file__).with_name(...)`` (e.g. the registered model's source)."""
    files = set()
    for mod in closure(name):
        path = module_file(mod)
        if path.name == "__init__.py" and not _has_code(path):
            continue
        files.add(path.relative_to(REPO).as_posix())
        for data in path.parent.iterdir():
            if data.is_file() and data.suffix in (".yaml", ".json", ".txt", ".csv"):
                files.add(data.relative_to(REPO).as_posix())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "with_name" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                files.add((path.parent / node.args[0].value).relative_to(REPO).as_posix())
    return files


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


# ----------------------------------------------------------------------------- dvc.yaml
def test_dvc_yaml_lists_every_file_of_each_stage_s_import_closure():
    stages = dvc_stages()
    missing = {}
    for stage, module in STAGE_MODULE.items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stages[stage]["deps"]]
        lacking = sorted(f for f in code_files(module) if not covered(f, deps))
        if lacking:
            missing[stage] = lacking
    assert not missing, f"dvc.yaml deps lack code the stage runs (a change there would not rerun it): {missing}"


def test_dvc_yaml_lists_no_code_a_stage_does_not_run():
    """Extra code deps rerun a stage for nothing (e.g. transcribe when a visual encoder changes)."""
    extra = {}
    for stage, module in STAGE_MODULE.items():
        deps = [d for d in dvc_stages()[stage]["deps"] if isinstance(d, str) and d.startswith("emi/")]
        needed = code_files(module)
        unused = [d for d in deps if not any(covered(f, [d]) for f in needed)]
        if unused:
            extra[stage] = unused
    assert not extra, f"dvc.yaml deps name code the stage never imports: {extra}"


def test_the_closure_finds_lazy_and_relative_imports(tmp_path):
    # the real package: the Stage-I fine-tuner is imported inside a function, and only when tuning
    assert "emi.train.finetune" in closure("emi.stages.stage1")
    assert "emi/train/finetune.py" in code_files("emi.stages.stage1")
    assert "emi/synth/sentences.yaml" in code_files("emi.stages.download")  # data read beside the code
    assert "emi.encoders.visual" not in closure("emi.stages.transcribe")


def test_dvc_yaml_paths_are_the_layout():
    """Every data/models/reports path dvc.yaml names is one the code's Layout defines (or lies inside one)."""
    layout = Layout()
    known = {str(getattr(layout, name)) for name in dir(Layout) if isinstance(getattr(Layout, name), property)}
    named = set()
    for stage in dvc_stages().values():
        for key in ("deps", "outs", "metrics", "plots"):
            for item in stage.get(key, []):
                path = item if isinstance(item, str) else next(iter(item))
                if not path.startswith("emi/"):
                    named.add(path)
    strays = sorted(p for p in named if not any(p == k or p.startswith(k + "/") for k in known))
    assert not strays, f"dvc.yaml names paths outside emi.paths.Layout: {strays}"


def params_read(name: str) -> set[str]:
    """The config keys (or sections) the code of a stage reads: every ``params.<key path>`` in the modules of its
    import closure, taken as long as it names a key or section (``params.extract.fps`` -> ``extract.fps``;
    ``cfg = params.extract`` -> the whole ``extract`` section)."""
    keys = set(leaf_keys())
    known = keys | {".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1)}
    found = set()
    for mod in closure(name):
        tree = ast.parse(module_file(mod).read_text(encoding="utf-8"))
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue
            parts, base = [], node
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "params":
                parts.reverse()
                named = [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known]
                found.update(named[-1:])
    return found


def tracked_leaves(entries: list[str]) -> set[str]:
    """Every leaf key the given keys/sections cover, without the untracked ones."""
    def untracked(k: str) -> bool:
        return any(k == u or k.startswith(u + ".") for u in UNTRACKED)

    return {k for k in leaf_keys() for e in entries if (k == e or k.startswith(e + ".")) and not untracked(k)}


def test_dvc_yaml_tracks_exactly_the_params_each_stage_reads():
    """dvc.yaml's params (all in params.yaml) cover every key a stage's code reads, except the ones that cannot
    change an output (emi.config.UNTRACKED), and nothing else: a change reruns the stages it affects, only those."""
    wrong = {}
    for stage, module in STAGE_MODULE.items():
        listed = dvc_stages()[stage].get("params", [])
        assert all(isinstance(p, str) for p in listed), f"{stage}: params come from params.yaml only"
        assert not [p for p in listed if p not in set(leaf_keys()) | {".".join(k.split(".")[:i]) for k in
                                                                      leaf_keys() for i in range(1, 4)}], stage
        covered_now, needed = tracked_leaves(listed), tracked_leaves(sorted(params_read(module)))
        if covered_now != needed:
            wrong[stage] = {"missing": sorted(needed - covered_now), "needless": sorted(covered_now - needed)}
    assert not wrong, f"dvc.yaml params differ from what the stages read: {wrong}"


def test_untracked_keys_are_listed_by_no_stage():
    for stage in STAGES:
        for entry in dvc_stages()[stage].get("params", []):
            assert not any(entry == u or entry.startswith(u + ".") or u.startswith(entry + ".") for u in UNTRACKED), (
                f"{stage} tracks {entry}, which holds a key that cannot change an output (emi.config.UNTRACKED)")


# ----------------------------------------------------------------------------- layering
def test_no_import_cycles():
    graph = {m: {i for i in imports_of(m) if i in graph_nodes()} for m in graph_nodes()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles (lazy imports included): {cycles}"


@cache
def graph_nodes() -> frozenset[str]:
    # a package's __init__ is not an edge target that creates a cycle by itself: only modules with code count
    return frozenset(m for m in all_modules() if not module_file(m).name == "__init__.py"
                     or _has_code(module_file(m)))


def test_libraries_never_import_a_stage():
    offenders = {}
    for mod in all_modules():
        if mod.startswith(ENTRY_POINTS) or mod in ENTRY_POINTS:
            continue
        stages = sorted(i for i in imports_of(mod) if i.startswith("emi.stages.") or i == "emi.stages")
        if stages:
            offenders[mod] = stages
    assert not offenders, f"libraries importing stage modules: {offenders}"


def test_the_modality_triple_and_the_split_names_are_defined_once():
    definitions = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
                values = [getattr(e, "value", None) for e in node.value.elts]
                if values in (["visual", "audio", "text"], ["V", "A", "T"], ["train", "valid", "test"]):
                    definitions.setdefault(tuple(values), []).append(path.relative_to(REPO).as_posix())
    assert all(len(v) == 1 for v in definitions.values()), definitions


# ----------------------------------------------------------------------------- size
STAGE_MODULE_LINES = 150
FUNCTION_LINES = 80


def test_stage_modules_stay_thin():
    """A stage module parses its inputs, calls libraries and writes its outputs; logic lives in the libraries."""
    long = {p.name: n for p in (PACKAGE / "stages").glob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > STAGE_MODULE_LINES}
    assert not long, f"stage modules over {STAGE_MODULE_LINES} lines: {long}"


def test_no_function_is_longer_than_a_screen():
    long = {}
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "flows").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := node.end_lineno - node.lineno + 1) > FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.name}"] = n
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"


def test_no_two_top_level_names_of_the_package_mean_different_things():
    """One name, one meaning: a class, function or constant is defined at module level in one module only
    (private helpers and the stages' own result types aside)."""
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "cli.py":  # its commands are named after the stages they run
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = ([node.name] if isinstance(node, ast.ClassDef | ast.FunctionDef) else
                     [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else [])
            for name in names:
                if not name.startswith("_") and name not in ("log", "app"):
                    seen.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"names defined in more than one module: {twice}"
