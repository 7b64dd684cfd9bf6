"""The expert modules: each registers one or more experts (:func:`extractors.registry.register_expert`).

The extraction machinery (base class, registry, runner, input view, job) and the helpers experts
share (``hf_common``, ``series``, ``image_grey``, ...) live one level up, in ``extractors/``. This
file imports nothing: discovery imports the modules one by one, and a job loads only its expert's.
"""
