"""The built-in verifiers, one module each, named after the verifier it registers (`detection.py` is `detection`).

Importing this package registers them all. The machinery they plug into stays one level up in `rewards/`:
the registry and base classes (`registry.py`, `textual.py`, `params.py`), reward specs (`spec.py`), the shared
parsers (`answers.py`, `numbers.py`, `boxes.py`), COCO mAP, the IoU schedule, scoring, the pool and the TRL router.
`tests/test_layout.py` holds this folder to exactly the registered verifier modules.
"""

from triune_trl.rewards.verifiers import (  # noqa: F401  (registration side effect)
    choice,
    counting,
    detection,
    format,
    grounding,
    length,
    mathverify,
    numeric,
    ocr,
    tag,
    text_overlap,
)
