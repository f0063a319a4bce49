"""The study in one command: both arms pretrained, passkey fine-tuned, evaluated and reported."""

from infini_llama.study.config import STUDY_PRESETS, Arm, StudyConfig, expand_arms, study_config
from infini_llama.study.runner import StudyError, run_study

__all__ = ["STUDY_PRESETS", "Arm", "StudyConfig", "StudyError", "expand_arms", "run_study", "study_config"]
