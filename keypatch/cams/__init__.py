"""Class activation maps: GradCAM++ (see :mod:`keypatch.cams.gradcampp` for why it is built in)."""

from keypatch.cams.gradcampp import CAMResult, GradCAMPlusPlus, gradcampp_map, gradcampp_weights, normalize_maps

__all__ = ["CAMResult", "GradCAMPlusPlus", "classifier_cam", "gradcampp_map", "gradcampp_weights", "normalize_maps"]


def classifier_cam(classifier, x, class_idx=None) -> CAMResult:
    """GradCAM++ of a :class:`keypatch.classifiers.Classifier` on its preprocessed batch ``x``."""
    return GradCAMPlusPlus(lambda t: classifier.forward(t)[0], classifier.target_layer)(x, class_idx)
