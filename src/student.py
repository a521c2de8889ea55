"""Stage `student`: the deployed model, trained as the method says (robustkd.methods): a one-loss method trains a
classifier, from scratch or distilled from the last assistant (else the teacher); purification a purifier in front
of the teacher classifier; darht a feature-map student of the `darht_teacher@<name>` stages' teachers.
"""
from robustkd import stage
from robustkd.methods.registry import method_for
from robustkd.roles import load_training_run


def main(params: dict) -> None:
    method_for(params).train_student(params, load_training_run(params, awp=True))


if __name__ == "__main__":
    stage.run(main, torchrun=True)
