"""Entry point `lmms_eval.models` -> `llava_dpa` (setup.py). lmms-eval imports this when it lists models, so
it names the class by path and imports nothing heavy."""


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="llava_dpa", simple_class_path="llava_dpa.eval.lmms_model.LlavaDPA")
