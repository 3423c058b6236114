"""The shape of the codebase, as the house style asks it: rooms that import only rooms below them (no cycles, at
most five floors), no function over 60 lines, no class over 160, one logging channel, and a README that stays a
front door."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAX_FLOORS, MAX_FUNCTION_LINES, MAX_CLASS_LINES, MAX_README_LINES = 5, 60, 160, 250
# Programs whose own output (translations, tables, the fault hook's cue, the log handler itself) is printed.
MAY_PRINT = {"train", "translate", "export", "bench", "real_corpora", "faults", "monitor", "compare_hf"}


def rooms() -> dict[str, ast.Module]:
    return {name[:-3]: ast.parse(open(os.path.join(ROOT, name), encoding="utf-8").read())
            for name in sorted(os.listdir(ROOT)) if name.endswith(".py")}


def imports_of(tree: ast.Module, names: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & names


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """1 for a room that imports no other, else one above the highest room it imports; ValueError on a cycle."""
    floor: dict[str, int] = {}

    def visit(room: str, path: tuple[str, ...]) -> int:
        if room in path:
            raise ValueError(f"import cycle: {' -> '.join(path + (room,))}")
        if room not in floor:
            floor[room] = 1 + max((visit(other, path + (room,)) for other in graph[room]), default=0)
        return floor[room]

    for room in graph:
        visit(room, ())
    return floor


def test_rooms_import_only_rooms_below_them_on_at_most_five_floors():
    trees = rooms()
    graph = {name: imports_of(tree, set(trees)) - {name} for name, tree in trees.items()}
    floor = floors(graph)
    assert max(floor.values()) <= MAX_FLOORS, sorted(floor.items(), key=lambda item: item[1])
    assert floor["errors"] == 1 and not graph["model"], "errors and the network sit at the bottom"
    assert "config" not in graph["distributed"] | graph["checkpoint"] | graph["runtime"], "raising needs no settings"


def test_the_floor_count_sees_cycles():
    try:
        floors({"a": {"b"}, "b": {"a"}})
    except ValueError as e:
        assert "a -> b -> a" in str(e)
    else:
        raise AssertionError("a cycle went unnoticed")
    assert floors({"a": set(), "b": {"a"}, "c": {"a", "b"}}) == {"a": 1, "b": 2, "c": 3}


def test_no_function_over_60_lines_and_no_class_over_160():
    too_long = []
    for name, tree in rooms().items():
        for node in ast.walk(tree):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.end_lineno - node.lineno + 1 > limit:
                    too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long


def test_one_logging_channel_no_say_callbacks_and_prints_only_in_programs():
    for name, tree in rooms().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.arg):
                assert node.arg not in ("say", "report"), f"{name}: a '{node.arg}' callback instead of the log"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                assert name in MAY_PRINT, f"{name}.py:{node.lineno} prints instead of logging"
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger" and node.args:
                assert node.args[0].value == "translation", f"{name}.py:{node.lineno}: one logger for all rooms"


def test_the_readme_is_a_front_door_and_its_links_lead_somewhere():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert len(readme.splitlines()) <= MAX_README_LINES
    for link in (part.split(")")[0] for part in readme.split("](")[1:]):
        if not link.startswith(("http", "#")):
            assert os.path.exists(os.path.join(ROOT, link.split("#")[0])), link
