"""Names that `vulture imagereward --min-confidence 60` reports as unused, each used where vulture cannot see it.

Never imported; vulture reads it with the package (it lies inside it, so the plain command above finds it). Each line
names what is used and says by whom. A name that is really unused is deleted rather than listed here.
"""
# ruff: noqa: B018, F821

# Called by Python itself or by torch, never by name.
_.__getattr__  # imagereward/__init__.py, collection/__init__.py: module attributes imported on first use (PEP 562)
_.forward  # every nn.Module in model.py and scorers/*: torch calls it through Module.__call__
_.find_class  # openai_clip's restricted unpickler: pickle.Unpickler calls it for every global in the file
_.persistent_load  # the same unpickler: pickle calls it for every tensor storage
_.readable  # collection/storage.py _Raw: io.BufferedReader calls the raw stream's readable() and seekable()
_.seekable
_.locations  # collection/sources.py ShardSource: unpickled in a decode worker, they register their filesystems there

# The WebUI's side (script.py is the only module that imports the WebUI; its hooks are called by the WebUI).
_.ImageRewardScript  # found by the WebUI's script loader as a subclass of modules.scripts.Script
_.sorting_priority  # read by A1111's script ordering
_.title  # modules.scripts.Script API
_.ui  # modules.scripts.Script API
_.infotext_fields  # read by the WebUI to paste generation parameters back
_.paste_field_names  # the same
_.before_process  # Script hooks the WebUI calls during a generation
_.process
_.postprocess_batch_list
_.postprocess_image  # SD.Next: its last per-image hook (host.py)
_.postprocess_image_after_composite
_.postprocess
_.register_callbacks  # called by scripts/imagereward.py, the WebUI's entry point (outside this package)
_.sampling_p  # script.py: the signature of the WebUI's sampler method it wraps (the argument is passed positionally)

# Public API of the library, used by its callers and tests (not inside the package).
_.from_files  # ImageRewardScorer.from_files: explicit local files (README, bench/, tests/test_parity.py)
_.resolve_model_files  # hub.resolve_model_files: ImageReward's files without loading the model (README, tests)
_.unload  # ScorerRuntime.unload: drops every loaded model (tests/test_gpu_scorers.py measures the memory it frees)
_.count_tokens  # text.PromptTokenizer, clip_text.ClipPromptEncoder: prompt length for callers and tests
_.eta_s  # collection.pipeline.Progress: the estimated time left, for callers of score_collection
_.is_done  # collection.store.DoneIndex.is_done: whether a key's current row has a fingerprint (tests, callers)
_.letterbox_pixels  # scorers/hpsv2.py: HPSv2's pixels from a PIL image, the reference's steps (tests compare them)
_.write_random_release  # each scorer module: a release-format checkpoint with random weights (tests, bench/)
_.front_end_table  # specs.front_end_table: the front end's scorer table (tests/fixtures/scorers.json, JS tests)
_.forget  # collection.storage.forget: drops resolved filesystems (tests that change the environment between runs)

# Documentation data in the scorer table: read by people (README's tables quote them), not by code.
_.backbone  # ModelFamily.backbone
_.size_mb  # ModelFamily.size_mb
_.approximate  # Standardisation.approximate
_.licence  # ScorerSpec.licence
_.published  # ScorerSpec.published
