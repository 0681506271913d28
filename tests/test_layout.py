"""The shape of the code: imports flow one way (no circles, the command line is a
leaf, runtime/ never imports bundler/), and the loader decides the thread count."""

import ast
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_graph():
    """{module: set of project modules it imports}, lazy imports included."""
    paths = {}
    for package in ("runtime", "bundler"):
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    paths[module[:-len(".__init__")] if module.endswith(".__init__")
                          else module] = path
    graph = {}
    for module, path in paths.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        # a package's own __init__ runs first anyway: not an arrow back
        graph[module] = {d for d in deps if d in paths and d != module
                         and not module.startswith(d + ".")}
    return graph


def test_import_graph_has_no_circle():
    graph = import_graph()
    state = {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_command_line_is_a_leaf_and_runtime_never_imports_bundler():
    graph = import_graph()
    assert sorted(m for m, deps in graph.items() if "runtime.cli" in deps) == \
        ["bundler.bundle_main", "runtime.__main__"]
    assert not [m for m, deps in graph.items()
                if m.startswith("runtime") and any(d.startswith("bundler") for d in deps)]


def test_thread_default_is_the_cpus_this_process_may_use(capsys):
    from runtime.loader import decide_threads, usable_cpus
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cpus() == usable
    assert decide_threads(0) == usable
    assert decide_threads(1) == 1
    assert capsys.readouterr().err == ""
    assert decide_threads(usable + 3) == usable
    err = capsys.readouterr().err
    assert f"-t {usable + 3} capped to {usable}" in err and err.count("\n") == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_thread_default_follows_the_affinity_mask():
    import subprocess
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from runtime.loader import decide_threads; print(decide_threads(0))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


def test_default_path_needs_neither_numpy_nor_sentencepiece():
    """The run side works on a bare python3 (riscv64 has no wheels for either): with
    both made unimportable, a greedy run on the C kernels prints the same text."""
    import subprocess
    from tests.models import smollm2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["-m", smollm2(), "-p", "Once upon a time,", "-n", "8", "--temp", "0"]
    blocked = ("import sys; sys.modules['numpy'] = None; sys.modules['sentencepiece'] = None; "
               "from runtime.cli import main; sys.exit(main(sys.argv[1:]))")
    bare = subprocess.run([sys.executable, "-c", blocked] + args, cwd=root,
                          capture_output=True, text=True, timeout=600)
    plain = subprocess.run([sys.executable, "-m", "runtime"] + args, cwd=root,
                           capture_output=True, text=True, timeout=600)
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == plain.stdout and bare.stdout.strip()
