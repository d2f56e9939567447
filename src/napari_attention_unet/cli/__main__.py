"""``python -m napari_attention_unet.cli``: the same as ``attention-unet``."""

from napari_attention_unet.cli import main

raise SystemExit(main())
