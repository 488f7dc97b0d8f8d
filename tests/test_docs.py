"""The commands the docs show work as written: every code block of README.md and the docs pages,
and the usage lines of train.py's and the scripts' docstrings, are parsed, and each command is
checked without running it for real.

- `python train.py ...`, `torchrun ... train.py ...`, `sbatch ... train.sbatch ...`: the
  overrides compose (Hydra's compose API, as `--cfg job` would) into a valid TrainConfig.
  Commands for GPUs must compose to a paper recipe (100K-step scale), unless their comment says
  they are a smoke test.
- `python -m data.prepare ...`: composes configs/prepare.yaml.
- `python scripts/<x>.py ...`: the script exists and defines every `--flag` used; a study name
  exists in configs/study/ (run_study.py is also run with --dry-run, which is cheap);
  train.py overrides of the bench scripts compose.
- Everywhere in the docs: every `configs/...`, `scripts/...`, `docs/...` path that is mentioned
  exists, and every `group=option` names an existing option.
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from configs.groups import group_options
from configs.schema import register_configs

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/paper_scale.md", "docs/results/README.md", "scripts/slurm/README.md")
GROUPS = ("model", "data", "optim", "experiment", "study")
# A GPU command that composes to fewer steps than this is a toy run shown as if it were training.
RECIPE_MIN_STEPS = 10_000
MAX_SWEEP_POINTS = 16  # composing more points of a multirun sweep adds nothing

register_configs()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[tuple[str, str]]:
    """(command, comment) per logical line of a shell block: continuation lines joined, the
    trailing `# comment` split off, `a && b` and `a; b` split into separate commands."""
    joined = re.sub(r"\\\n\s*", " ", block)
    result = []
    for line in joined.splitlines():
        code, comment = split_comment(line)
        words = shlex.split(code)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";") or word.endswith(";"):
                if word.endswith(";") and word != ";":
                    current.append(word[:-1])
                if current:
                    result.append((shlex.join(current), comment))
                current = []
            else:
                current.append(word)
    return result


def split_comment(line: str) -> tuple[str, str]:
    """(code, '# comment') of one shell line; a # inside quotes or a word is not a comment."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def docstring_examples(path: Path) -> str:
    """The indented `python ...` / `torchrun ...` usage lines of a module's docstring."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines = [line for line in doc.splitlines() if re.match(r"\s+(python|torchrun) ", line)]
    return "\n".join(line.strip() for line in lines)


def doc_commands() -> list[tuple[str, str, str]]:
    """(doc, command, comment) for every shell command in the docs and in the usage lines of
    train.py's and the scripts' docstrings."""
    found = []
    for doc in DOCS:
        for language, body in code_blocks((REPO / doc).read_text()):
            if language in ("bash", "sh", "shell"):
                found += [(doc, command, comment) for command, comment in commands(body)]
    for path in [REPO / "train.py", *sorted((REPO / "scripts").glob("*.py"))]:
        doc = str(path.relative_to(REPO))
        found += [(doc, cmd, comment) for cmd, comment in commands(docstring_examples(path))]
    return found


def _strip_env(words: list[str]) -> list[str]:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return words


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """A multirun's overrides as one list per point (`optim=adamw,sophia` -> two), capped."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([text])
    points = itertools.islice(itertools.product(*choices), MAX_SWEEP_POINTS)
    return [list(point) for point in points]


def compose_train(overrides: list[str]):
    """The TrainConfig train.py would run with these overrides (values validated)."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="train", overrides=overrides))


def compose_prepare(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        OmegaConf.to_object(compose(config_name="prepare", overrides=overrides).data)


def check_train_overrides(overrides: list[str], gpu: bool, comment: str, world: int = 1) -> None:
    """Every point composes; on `world` processes the batch splits into whole micro-batches;
    a GPU command is a recipe unless its comment calls it a smoke test."""
    overrides = [o for o in overrides if o != "-m" and o != "..."]
    for point in sweep_points(overrides):
        cfg = compose_train(point)
        micro = cfg.micro_batch_size or cfg.batch_size // world
        assert micro > 0 and cfg.batch_size % (micro * world) == 0, (
            f"batch_size={cfg.batch_size} does not split into micro_batch_size={micro} x "
            f"{world} processes: give the micro_batch_size that fits"
        )
        if gpu and "smoke test" not in comment:
            assert cfg.max_steps >= RECIPE_MIN_STEPS, (
                f"a GPU command composes to a toy run (max_steps={cfg.max_steps}, "
                f"block_size={cfg.block_size}): use experiment=<model>-<optim> or say what it is"
            )


def check_script(words: list[str], comment: str) -> None:
    script = REPO / words[0]
    assert script.is_file(), f"{words[0]} does not exist"
    source = script.read_text()
    args = words[1:]
    options = args[: args.index("--")] if "--" in args else args  # after --: train overrides
    for flag in (a.split("=")[0] for a in options if a.startswith("--")):
        assert f'"{flag}"' in source, f"{words[0]} has no option {flag}"
    positional = [a for a in args if not a.startswith("-")]
    name = script.stem
    if name == "run_study":
        study = positional[0]
        assert (REPO / "configs" / "study" / f"{study}.yaml").is_file(), f"no study {study!r}"
        if "--dry-run" in args:
            proc = subprocess.run(
                [sys.executable, *words], cwd=REPO, capture_output=True, text=True, timeout=60
            )
            assert proc.returncode == 0, proc.stderr
    elif name == "analyze_study" and positional:
        study_dir = Path(positional[0])
        if study_dir.parts[:2] == ("runs", "study"):
            study = study_dir.parts[2]
            assert (REPO / "configs" / "study" / f"{study}.yaml").is_file(), f"no study {study!r}"
    elif "overrides" in source and positional:  # bench scripts take train.py overrides
        # bench_memory's --optims may carry an optimizer's own overrides: name:key=value
        with_own = [a for a in positional if ":" in a.split("=")[0]]
        overrides = [a for a in positional if "=" in a and a not in with_own]
        check_train_overrides(overrides, False, comment)
        for choice in with_own:
            optim, *own = choice.split(":")
            check_train_overrides([*overrides, f"optim={optim}", *own], False, comment)


def check_command(command: str, comment: str) -> None:
    words = _strip_env(shlex.split(command))
    program, args = words[0], words[1:]
    if program == "pip":
        for i, word in enumerate(args):
            if word == "-r":
                assert (REPO / args[i + 1]).is_file()
        return
    if program == "torchrun":
        nproc = next((int(a.split("=")[1]) for a in args if a.startswith("--nproc_per_node")), 1)
        script_at = next(i for i, a in enumerate(args) if a.endswith(".py"))
        assert args[script_at] == "train.py", command
        overrides = args[script_at + 1 :]
        gpu = nproc >= 8 and "device=cpu" not in overrides
        check_train_overrides(overrides, gpu, comment, world=nproc)
        return
    if program == "sbatch":
        script_at = next(i for i, a in enumerate(args) if a.endswith(".sbatch") or a == "...")
        if args[script_at] == "...":
            return  # an elided example (`sbatch ...`)
        assert (REPO / args[script_at]).is_file(), f"{args[script_at]} does not exist"
        gpu = any(a.startswith("--gpus") for a in args) and "DEVICE=cpu" not in command
        options = dict(a.lstrip("-").split("=", 1) for a in args[:script_at] if "=" in a)
        nodes, per_node = int(options.get("nodes", 1)), int(options.get("gpus-per-node", 1))
        check_train_overrides(args[script_at + 1 :], gpu, comment, world=nodes * per_node)
        return
    if program.endswith(".sh"):
        assert (REPO / program).is_file(), f"{program} does not exist"
        return
    if program != "python":
        return  # shell built-ins and Slurm's own clients (export, sinfo, squeue, ...)
    if args[:2] == ["-m", "pytest"]:
        rest = args[2:]
        paths = [a for i, a in enumerate(rest) if not a.startswith("-") and not (
            i > 0 and rest[i - 1] in ("-n", "--dist", "-k", "-m"))]  # fmt: skip
        for path in paths:
            assert (REPO / path.split("::")[0]).exists(), f"no test path {path}"
    elif args[:2] == ["-m", "data.prepare"]:
        compose_prepare(args[2:])
    elif args[0] == "train.py":
        launcher = any(a.startswith("hydra/launcher=slurm") for a in args)
        check_train_overrides(args[1:], launcher, comment)
    elif args[0].startswith("scripts/"):
        check_script(args, comment)
    else:
        raise AssertionError(f"the doc test does not know how to check `{command}`")


@pytest.mark.parametrize(
    ("doc", "command", "comment"),
    doc_commands(),
    ids=[f"{doc}: {command[:70]}" for doc, command, _ in doc_commands()],
)
def test_doc_command_is_valid(doc, command, comment):
    check_command(command, comment)


def test_the_readme_shows_commands_for_every_entry_point():
    shown = " ".join(command for doc, command, _ in doc_commands() if doc == "README.md")
    for entry in ("train.py", "data.prepare", "run_study.py", "analyze_study.py", "torchrun"):
        assert entry in shown


@pytest.mark.parametrize("doc", DOCS)
def test_paths_the_doc_names_exist(doc):
    text = (REPO / doc).read_text()
    base = (REPO / doc).parent
    mentioned = set(re.findall(r"(?<![\w./-])((?:configs|scripts|docs|tests)/[\w./-]*\w)", text))
    mentioned |= {m for m in re.findall(r"\]\(([\w./-]+)\)", text) if not m.startswith("http")}
    missing = [
        path
        for path in sorted(mentioned)
        if "<" not in path and not (REPO / path).exists() and not (base / path).exists()
    ]
    assert not missing, f"{doc} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_group_options_the_doc_names_exist(doc):
    text = (REPO / doc).read_text()
    missing = []
    for group, value in re.findall(r"(?<![\w./])(" + "|".join(GROUPS) + r")=([\w,.-]+)", text):
        for option in value.split(","):
            option = option.rstrip(".")
            if option and option != "null" and option not in group_options(group):
                missing.append(f"{group}={option}")
    assert not missing, f"{doc} names options that do not exist: {missing}"


def test_a_toy_gpu_command_is_caught():
    toy = "torchrun --standalone --nproc_per_node=8 train.py model=gpt2-small optim=sophia"
    with pytest.raises(AssertionError, match="toy run"):
        check_command(toy, "# one 8-GPU node")
    check_command(toy, "# a smoke test of the 8-GPU setup")


def test_a_missing_study_or_option_is_caught():
    with pytest.raises(AssertionError, match="no study 'cpu'"):
        check_command("python scripts/run_study.py cpu", "")
    with pytest.raises(Exception, match="optim/nope"):
        check_command("python train.py optim=nope", "")


@pytest.mark.parametrize("report", sorted((REPO / "docs" / "results").glob("*/report.md")))
def test_committed_reports_never_call_a_higher_loss_faster(report):
    """Every row whose speedup and loss gap disagree is marked ‡, and the verdict does not call
    that optimizer faster (or slower) at that horizon."""
    text = report.read_text()
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| model | optimizer"))
    header = [cell.strip() for cell in lines[header_at].strip("|").split("|")]
    gap_at = next(i for i, name in enumerate(header) if name.startswith("Δ vs"))
    steps_at = next(i for i, name in enumerate(header) if name.startswith("speedup"))
    for line in lines[header_at + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        gap, speedup = cells[gap_at], cells[steps_at]
        if gap == "–" or not speedup[:1].isdigit():
            continue
        value, delta = float(speedup.split("x")[0]), float(gap.split()[0])
        if (value > 1 and delta > 0) or (value < 1 and delta < 0):
            assert "‡" in speedup, f"{report.name}: {cells[1]} at {cells[2]} steps lacks ‡"
            sentence = text.split(f"({cells[0]}, {cells[2]} steps), {cells[1]}'s")
            if len(sentence) > 1:
                first = sentence[1].split(". ")[0]
                assert "faster than" not in first and "slower than" not in first, first
