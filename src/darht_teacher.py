"""Stage `darht_teacher@<name>` (a `foreach` over params.yaml `darht.pool`): one DARHT teacher.

    python src/darht_teacher.py <name>

Trains the teacher `darht.pool.<name>` into models/darht/<name>/teacher.pt when the method is darht and the entry
has `use: true`, and lists it in models/darht/<name>/models.json; otherwise it writes that manifest empty, saying
why (no torch import: the stage costs a fraction of a second, so the default pipeline is not slowed down). See
robustkd/methods/darht_pool.py.
"""
import sys

from robustkd import stage
from robustkd.methods import darht_pool


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python src/darht_teacher.py <name in darht.pool>")
    stage.run(lambda params: darht_pool.train_pool_member(params, argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
