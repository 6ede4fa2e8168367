"""Safety guard for CI: nothing from a model, a dataset or a parameters file is ever executed,
remote model code only runs when the configuration asks for it, and stages write only under
the configured `data_dir` / `metrics_dir`.

The code checks read every `.py` file under `pipeline/` and `stages/` with `ast` (comments and
docstrings do not count) and fail on:
- `eval(...)` / `exec(...)` (a method such as `model.eval()` is fine);
- unpickling: `pickle` / `dill` / `cloudpickle` / `joblib` `load(s)`, `Unpickler`, `read_pickle`,
  `numpy.load(allow_pickle=True)`;
- `torch.load` without `weights_only=True`;
- `sympify` / `parse_expr` (sympy evaluates the string as Python), `ExprExtractionConfig`
  (math-verify's plain-expression extraction calls `parse_expr`), and `math_verify.parse` without
  an explicit `extraction_config` (its default includes `ExprExtractionConfig`);
- a shell: `shell=` anything but `False`, `os.system`, `os.popen`;
- `trust_remote_code` set from anything but a `trust_remote_code` value (config, model ref,
  parameter) or the literal `False`.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("pipeline", "stages")

UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}
UNPICKLE_CALLS = {"load", "loads", "Unpickler", "open"}
SYMPY_EVALUATORS = {"sympify", "parse_expr", "eval_expr", "stringify_expr"}


def _name(node: ast.AST) -> str | None:
    """`foo` for `foo` and for `x.y.foo`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _dotted(node: ast.AST) -> str:
    """`torch.load` for `torch.load(...)`'s func; "" when not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _trusted_source(node: ast.AST) -> bool:
    """A value for trust_remote_code: literal False, or a `trust_remote_code` name/attribute."""
    if _is_const(node, False):
        return True
    if isinstance(node, ast.Call) and _name(node.func) == "bool" and len(node.args) == 1:
        node = node.args[0]  # bool(data.get("trust_remote_code")) reads a pointer file written from the config
        if isinstance(node, ast.Call) and _name(node.func) == "get" and node.args:
            return isinstance(node.args[0], ast.Constant) and node.args[0].value == "trust_remote_code"
    return _name(node) == "trust_remote_code"


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Every unsafe construct in one module, as `file:line: what`."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    math_verify_parse = {"math_verify.parse"}  # names under which math_verify.parse is reachable

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module.split(".")[0]
            for alias in node.names:
                if module in UNPICKLERS and alias.name in UNPICKLE_CALLS:
                    report(node, f"imports {node.module}.{alias.name} (unpickling)")
                if alias.name in SYMPY_EVALUATORS:
                    report(node, f"imports {alias.name} from {node.module} (evaluates strings as Python)")
                if alias.name == "ExprExtractionConfig":
                    report(node, "imports ExprExtractionConfig (math-verify's parse_expr extraction)")
                if module == "torch" and alias.name == "load":
                    report(node, "imports torch.load (call it as torch.load(..., weights_only=True))")
                if module == "math_verify" and alias.name == "parse":
                    math_verify_parse.add(alias.asname or "parse")
                if module in ("os", "builtins") and alias.name in ("system", "popen", "eval", "exec"):
                    report(node, f"imports {module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "math_verify" and alias.asname:
                    math_verify_parse.add(f"{alias.asname}.parse")
        elif isinstance(node, (ast.Name, ast.Attribute)) and _name(node) == "ExprExtractionConfig":
            report(node, "uses ExprExtractionConfig (math-verify's parse_expr extraction)")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and not _trusted_source(value):
                    report(node, "trust_remote_code set in a dict literal, not from the config")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and any(_name(t) == "trust_remote_code" for t in targets):
                if not _trusted_source(node.value):
                    report(node, "trust_remote_code assigned a value that is not the config's")

        if not isinstance(node, ast.Call):
            continue
        func, dotted, name = node.func, _dotted(node.func), _name(node.func)
        if isinstance(func, ast.Name) and name in ("eval", "exec"):
            report(node, f"calls {name}()")
        if dotted in ("builtins.eval", "builtins.exec", "os.system", "os.popen") or dotted.startswith("os.exec"):
            report(node, f"calls {dotted}()")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id in UNPICKLERS and func.attr in UNPICKLE_CALLS:
                report(node, f"calls {dotted}() (unpickling)")
        if name == "read_pickle":
            report(node, "calls read_pickle() (unpickling)")
        if name == "load" and _is_const(_keyword(node, "allow_pickle"), True):
            report(node, f"calls {dotted or 'load'}(allow_pickle=True) (unpickling)")
        if dotted == "torch.load" and not _is_const(_keyword(node, "weights_only"), True):
            report(node, "calls torch.load without weights_only=True")
        if name in SYMPY_EVALUATORS:
            report(node, f"calls {name}() (evaluates strings as Python)")
        if dotted in math_verify_parse and _keyword(node, "extraction_config") is None:
            report(node, "calls math_verify.parse without extraction_config (the default includes ExprExtractionConfig)")
        shell = _keyword(node, "shell")
        if shell is not None and not _is_const(shell, False):
            report(node, f"calls {dotted or name}() with shell=...")
        trust = _keyword(node, "trust_remote_code")
        if trust is None and name == "ModelRef" and len(node.args) >= 3:  # ModelRef(name, revision, trust)
            trust = node.args[2]
        if trust is not None and not _trusted_source(trust):
            report(node, f"calls {dotted or name}() with trust_remote_code not taken from the config")
    return found


def python_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py") if ".venv" not in p.parts)


def test_the_scan_covers_the_code():
    files = {p.relative_to(REPO).as_posix() for p in python_files()}
    for expected in ("pipeline/models.py", "pipeline/grading/equivalence.py", "pipeline/grading/pool.py",
                     "pipeline/backends/transformers_backend.py", "stages/cli.py", "stages/prepare.py"):
        assert expected in files
    assert len(files) >= 30


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_unsafe_calls(path):
    assert violations(path.read_text(), path.relative_to(REPO).as_posix()) == []


UNSAFE = {
    "eval": "x = eval(text)",
    "exec": "exec(code)",
    "builtins.eval": "import builtins\nbuiltins.eval(s)",
    "pickle.load": "import pickle\npickle.load(handle)",
    "pickle.loads": "import pickle\ndata = pickle.loads(raw)",
    "from pickle": "from pickle import loads",
    "dill": "import dill\ndill.loads(raw)",
    "joblib": "import joblib\njoblib.load('m.pkl')",
    "read_pickle": "import pandas as pd\npd.read_pickle('x')",
    "numpy allow_pickle": "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
    "torch.load": "import torch\ntorch.load('w.pt')",
    "torch.load weights_only=False": "import torch\ntorch.load('w.pt', weights_only=False)",
    "from torch import load": "from torch import load",
    "sympify": "import sympy\nsympy.sympify(answer)",
    "parse_expr": "from sympy.parsing.sympy_parser import parse_expr",
    "parse_expr call": "import sympy.parsing.sympy_parser as p\np.parse_expr(answer)",
    "ExprExtractionConfig": "from math_verify import ExprExtractionConfig",
    "ExprExtractionConfig attribute": "import math_verify\nconfig = [math_verify.ExprExtractionConfig()]",
    "math_verify.parse default": "from math_verify import parse\nparse(answer)",
    "math_verify.parse aliased": "import math_verify as mv\nmv.parse(answer)",
    "shell=True": "import subprocess\nsubprocess.run(command, shell=True)",
    "shell variable": "import subprocess\nsubprocess.Popen(command, shell=use_shell)",
    "os.system": "import os\nos.system(command)",
    "trust_remote_code=True": "AutoModel.from_pretrained(name, trust_remote_code=True)",
    "trust_remote_code from elsewhere": "AutoModel.from_pretrained(name, trust_remote_code=args.yes)",
    "trust_remote_code in a dict": "kwargs = {'trust_remote_code': True}",
    "trust_remote_code default True": "class C:\n    trust_remote_code: bool = True",
    "ModelRef positional True": "ref = ModelRef(path, None, True)",
}

SAFE = {
    "method eval": "model.eval()\nmodel.train(False)",
    "torch.load weights_only": "import torch\ntorch.load('w.pt', weights_only=True, map_location='cpu')",
    "subprocess list": "import subprocess\nsubprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE)",
    "shell=False": "import subprocess\nsubprocess.run(['ls'], shell=False)",
    "math_verify latex": "from math_verify import LatexExtractionConfig, parse\nparse(s, extraction_config=[LatexExtractionConfig()])",
    "json": "import json\njson.loads(line)",
    "trust from config": "f(name, trust_remote_code=ref.trust_remote_code)\ng(trust_remote_code=config.model.trust_remote_code)",
    "trust parameter": "def load(name, trust_remote_code: bool = False):\n    return f(name, trust_remote_code=trust_remote_code)",
    "trust from a pointer": "ModelRef(d['n'], d.get('revision'), bool(data.get('trust_remote_code')))",
    "ModelRef positional False": "ModelRef(str(out_dir), None, False)\nModelRef(n, r, config.trust_remote_code)",
    "docstring": '"""We never call eval() or pickle.loads() or sympify()."""',
}


@pytest.mark.parametrize("name", list(UNSAFE))
def test_the_guard_catches(name):
    assert violations(UNSAFE[name]), f"{name!r} was not caught"


@pytest.mark.parametrize("name", list(SAFE))
def test_the_guard_allows(name):
    assert violations(SAFE[name]) == []


# -- trust_remote_code comes from the configuration only, default False ------------------------


def test_trust_remote_code_defaults_to_false():
    from pipeline.config import ModelConfig, Params, load_params
    from pipeline.models import ModelRef, resolve

    assert ModelConfig().trust_remote_code is False
    assert Params().model.trust_remote_code is False
    assert ModelRef("x").trust_remote_code is False
    assert inspect.signature(resolve).parameters["trust_remote_code"].default is False
    assert load_params(REPO / "params.yaml").model.trust_remote_code is False
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        assert load_params(recipe).model.trust_remote_code is False, recipe.name


def test_trust_remote_code_follows_the_config(tmp_path):
    from pipeline.config import ModelConfig
    from pipeline.models import prepare_base_model, resolve

    (tmp_path / "weights").mkdir()
    for trust in (False, True):
        out = tmp_path / f"base_{trust}"
        ref = prepare_base_model(ModelConfig(name_or_path=str(tmp_path / "weights"), trust_remote_code=trust), out)
        assert ref.trust_remote_code is trust
        assert json.loads((out / "model_ref.json").read_text())["trust_remote_code"] is trust
        assert resolve(out).trust_remote_code is trust  # the pointer, not the caller, decides
    assert resolve(tmp_path / "weights").trust_remote_code is False


# -- stages write under data_dir / metrics_dir only --------------------------------------------


def _layout_paths(layout) -> dict[str, Path]:
    """Every path a Layout hands out, for a few rounds and both splits."""
    from pipeline.paths import Layout

    paths: dict[str, Path] = {}
    for name, member in inspect.getmembers(Layout):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            paths[name] = getattr(layout, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            assert len(params) == 1, f"Layout.{name}: update this test for its arguments {params}"
            values = ("train", "eval") if params[0] == "split" else (0, 1, 7)
            for value in values:
                paths[f"{name}({value!r})"] = getattr(layout, name)(value)
    return paths


REPORT_PATHS = ("metrics", "train_metrics", "plots", "eval_reports", "arm_reports", "problem_metrics")


@pytest.mark.parametrize("relative", [False, True])
def test_layout_paths_stay_under_their_roots(tmp_path, monkeypatch, relative):
    from pipeline.paths import Layout

    monkeypatch.chdir(tmp_path)
    root, reports = (Path("d/data"), Path("m/metrics")) if relative else (tmp_path / "data", tmp_path / "metrics")
    paths = _layout_paths(Layout(root, reports))
    assert len(paths) >= 20
    for name, path in paths.items():
        assert isinstance(path, Path), name
        home = reports if name.split("(")[0] in REPORT_PATHS else root
        resolved = path.resolve()
        assert resolved.is_relative_to(home.resolve()) and resolved != home.resolve(), f"{name} -> {path}"


def test_stages_use_the_configured_roots(tmp_path):
    from pipeline.config import Params
    from stages.common import layout

    params = Params(data_dir=str(tmp_path / "d"), metrics_dir=str(tmp_path / "m"))
    paths = layout(params)
    assert paths.root == tmp_path / "d" and paths.reports == tmp_path / "m"


# Calls that write, and the position of their destination argument.
SINKS = {"write_table": 1, "write_json": 1, "ShardedWriter": 0, "train_sft": 2, "write_pointer": 1, "prepare_base_model": 1,
         "write_report": 1, "remove_output": 0}
DIRECT_WRITES = {"write_text", "write_bytes", "mkdir", "touch", "rmtree", "unlink", "rename", "copytree", "copyfile"}


def _from_layout(node: ast.AST, derived: set[str]) -> bool:
    """Is this path expression built from `layout(params)` or a configured root?"""
    if isinstance(node, ast.Name):
        return node.id in derived
    if isinstance(node, ast.Call):
        if _name(node.func) == "layout":
            return True
        if _name(node.func) == "Path" and len(node.args) == 1:  # Path(params.metrics_dir)
            return _name(node.args[0]) in ("data_dir", "metrics_dir")
        return isinstance(node.func, ast.Attribute) and _from_layout(node.func.value, derived)
    if isinstance(node, ast.Attribute):
        return _from_layout(node.value, derived)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _from_layout(node.left, derived)
    return False


@pytest.mark.parametrize("path", sorted((REPO / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stages_write_only_through_the_layout(path):
    tree = ast.parse(path.read_text())
    derived: set[str] = set()
    for node in ast.walk(tree):  # names bound to layout paths: paths = layout(params); out = paths.exports(r)
        if isinstance(node, ast.Assign) and _from_layout(node.value, derived):
            derived.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in ast.walk(tree):  # a second pass catches names bound from names found in the first
        if isinstance(node, ast.Assign) and _from_layout(node.value, derived):
            derived.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in ast.walk(tree):  # with staged_model_folder(out) as staging: a temporary sibling of a layout path
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if (isinstance(call, ast.Call) and _name(call.func) == "staged_model_folder" and call.args
                        and _from_layout(call.args[0], derived) and isinstance(item.optional_vars, ast.Name)):
                    derived.add(item.optional_vars.id)
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in SINKS:
            index = SINKS[name]
            target = node.args[index] if len(node.args) > index else None
            if target is None or not _from_layout(target, derived):
                problems.append(f"line {node.lineno}: {name}() writes to {ast.unparse(target) if target else '?'}")
        elif name in DIRECT_WRITES or name == "open":
            problems.append(f"line {node.lineno}: {ast.unparse(node.func)}() writes outside the pipeline's writers")
    assert problems == []


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # runs the stages on the tiny model
def test_stages_write_nothing_outside_their_roots(tmp_path, monkeypatch, smol_tokenizer_dir, tokenizer):
    """prepare-problems, split and score in a scratch working directory: every new file is under
    data_dir or metrics_dir, nothing lands in the working directory."""
    from pipeline.config import Params
    from pipeline.io import ShardedWriter, read_table
    from pipeline.models import ModelRef, write_pointer_folder
    from pipeline.tables import PROVER, TRACES, from_rows
    from stages import prepare, score, split

    def write_marked(folder: Path, table) -> None:  # a whole shard folder, as the stages leave one
        writer = ShardedWriter(folder, {"test": folder.name})
        writer.write(0, table)
        writer.complete(1)

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data, metrics = tmp_path / "data", tmp_path / "metrics"
    params = Params(data_dir=str(data), metrics_dir=str(metrics))
    params.problems.train_size, params.problems.eval_size = 4, 2
    params.grading.workers = 1

    prepare.run_problems(params)
    problems = read_table(data / "problems" / "train.parquet").to_pylist()
    write_pointer_folder(ModelRef(str(smol_tokenizer_dir)), data / "base_model")  # a tokenizer is all `split` loads
    before = _files(tmp_path)

    traces = []
    for problem in problems:
        text = "Add.\n\nStep.\n\nMore.\n\nWait, again.\n\nDone.\n</think>\n\n\\boxed{2}"
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        traces.append({
            "trace_id": problem["problem_id"] + "-t", "problem_id": problem["problem_id"], "round": 0, "sample_index": 0,
            "seed": 0, "prompt_ids": [1], "completion_ids": ids, "completion": text, "n_tokens": len(ids),
            "finish_reason": "stop", "thinking_end": len(ids) - 8, "answer_text": "\\boxed{2}", "extracted": "2",
            "grade": "incorrect", "correct": False, "model": "test",
        })
    write_marked(data / "rounds" / "0" / "traces", from_rows(traces, TRACES))
    split.run(params, 0)
    prover = [
        {"trace_id": t["trace_id"], "problem_id": t["problem_id"], "prefix_index": j, "n_episodes": 1, "prefix_tokens": 5 * j,
         "forced": j == 0, "n_samples": 2, "n_correct": j, "n_unparsed": 0, "j_hat": j / 2, "j_low": 0.0, "j_high": 1.0,
         "mean_answer_tokens": 3.0, "correct_answer": None, "correct_answer_ids": None}
        for t in traces for j in (0, 1)
    ]
    write_marked(data / "rounds" / "0" / "prover", from_rows(prover, PROVER))
    score.run(params, 0)

    assert _files(cwd) == set()
    new = _files(tmp_path) - before
    assert new, "the stages wrote nothing"
    for path in _files(tmp_path):
        assert path.is_relative_to(data) or path.is_relative_to(metrics), path
    assert {p.name for p in new} >= {"episodes.parquet", "progress.parquet", "regret.parquet"}


# -- parameters that could hang a stage -------------------------------------------------------


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|a)+$", r"(a|aa)+$"])
def test_a_catastrophic_episode_regex_stops_with_a_message(pattern):
    import time

    from pipeline.config import EpisodesConfig
    from pipeline.episodes import RegexTimeoutError, regex_boundaries

    config = EpisodesConfig(rule="regex", regex=pattern)
    start = time.monotonic()
    with pytest.raises(RegexTimeoutError, match=r"episodes\.regex: .* ran over 0\.2 s .*\(catastrophic backtracking"):
        regex_boundaries("Think.\n\n" + "a" * 5000 + "!", config, seconds=0.2)
    assert time.monotonic() - start < 10  # Python's `re` takes longer than the age of the universe here


def test_the_regex_limit_keeps_every_match_of_a_sane_pattern():
    from pipeline.config import EpisodesConfig
    from pipeline.episodes import regex_boundaries

    text = "Start.\n" + "".join(f"Backtrack to Line {i}\nstep\n" for i in range(60))
    found = regex_boundaries(text, EpisodesConfig(rule="regex", max_episodes=50), seconds=0.5)
    assert len(found) == 50 and found[0] == (7, "Backtrack to Line 0")


def test_grading_needs_a_worker_for_its_time_limit():
    from pipeline.config import ConfigError, load_params

    with pytest.raises(ConfigError, match="grading.workers: Input should be greater than or equal to 1"):
        load_params("/nonexistent.yaml", ["grading.workers=0"])
