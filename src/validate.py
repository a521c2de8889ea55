"""Stage `validate`: check the whole params.yaml against the schema, first, before any other stage runs.

Every other stage depends on this stage's output, so DVC runs it first whenever params.yaml changes, and a bad
value stops `dvc repro` here, with every problem listed (key, value, what is allowed, did you mean), before DVC
removes any other stage's outputs and before it reads any stage's params (its own "Parameters ... are missing"
error would come later and say less). The output is a constant, so a valid change to params.yaml reruns only the
stages whose params changed. Torch-free: it takes well under a second.

It also writes the teacher stage's resolved configuration, results/config/teacher.json (robustkd.teacher_config):
the teacher stage depends on that file instead of on params, so a change that leaves the teacher as it is (another
method that needs the same teacher) reruns nothing there. The folder pretrained/ is a dep of this stage, so editing
the `teacher.init_from` file reruns this check, which records the file's new sha256 there (and so reruns the
teacher). With `teacher.init_from` set, the file is also loaded (weights_only) and checked against the teacher's
architecture here, before DVC removes any output; that path imports torch.

One case stays DVC's: dvc.yaml's `foreach: ${darht.pool}` is resolved when DVC parses dvc.yaml, before any stage
runs, so a params.yaml without `darht.pool` stops `dvc repro` with DVC's "Could not find 'darht.pool'" (also before
anything is removed). `python src/validate.py` then gives the full report.
"""
from pathlib import Path

from robustkd import stage, teacher_config
from robustkd.io import atomic_write_json

OUT = Path("results/validated.json")
# Constant content: the file says the check passed, not what was checked (the params are in params.yaml and
# dvc.lock), so that rewriting it never reruns a downstream stage.
CONTENT = {"params.yaml": "valid (src/robustkd/params.py)"}


def main(params: dict) -> None:
    teacher_config.check_init_from(params)
    teacher_config.write(params)
    atomic_write_json(OUT, CONTENT)
    print("[validate] params.yaml is valid")


if __name__ == "__main__":
    stage.run(main)
