"""The study in one command: both arms pretrained, passkey fine-tuned, evaluated and reported, for one or more seeds."""

from infini_llama.study.arms import Arm, expand_arms
from infini_llama.study.config import STUDY_PRESETS, StudyConfig, study_config
from infini_llama.study.runner import StudyError, run_study

__all__ = ["STUDY_PRESETS", "Arm", "StudyConfig", "StudyError", "expand_arms", "run_study", "study_config"]
