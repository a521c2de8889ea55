"""Where every stage reads and writes: the one list of the pipeline's paths. Torch-free, so the stages that
never run a model (validate, metrics, an unused darht_teacher) can import it."""
from pathlib import Path

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
TEACHER_PATH = MODELS_DIR / "teacher.pt"
STUDENT_PATH = MODELS_DIR / "student.pt"
SURROGATE_PATH = MODELS_DIR / "surrogate.pt"
ASSISTANTS_DIR = MODELS_DIR / "assistants"
# The teacher stage's models beside the teacher (method purification: its purifier teachers).
TEACHER_EXTRAS_DIR = MODELS_DIR / "purifiers"
DARHT_DIR = MODELS_DIR / "darht"
LIVE_DIR = Path("dvclive")
RESUME_DIR = Path(".resume")  # per-epoch resume files; outside DVC's outputs so `dvc repro` keeps them
# Each trained model's wall-clock training seconds, read by the metrics stage for timing.json. Neither a DVC output
# nor a dep: time is not a function of the params, so it must not change a checkpoint or rerun a stage.
TIMING_DIR = Path(".timing")
ATTACK_RESULTS_DIR = Path("results/attack")
PREDICTIONS_DIR = Path("results/predict")
# The teacher stage's resolved configuration (robustkd.teacher_config), written by the validate stage: the teacher
# stage depends on this file instead of on params, so only what its outputs depend on reruns it.
TEACHER_CONFIG_PATH = Path("results/config/teacher.json")


def darht_teacher_dir(name: str) -> Path:
    return DARHT_DIR / name
