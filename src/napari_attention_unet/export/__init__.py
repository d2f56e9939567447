"""Export a model for tools outside this plugin: ONNX, TorchScript and BioImage Model Zoo.

- :mod:`.network`: the exported network (probabilities and attention maps as plain tensors),
  its input contract, :class:`ExportError`, and the ONNX and TorchScript writers.
- :mod:`.bioimageio`: the BioImage Model Zoo package (``rdf.yaml``, test tensors, zip) and its
  validation; :mod:`.bioimageio_card` holds the package's README, cover, license and credits.
- :mod:`.formats`: :func:`export_model`, which picks the writer for a format and the file name.

Arrows point one way: formats -> bioimageio -> bioimageio_card -> network.
"""

from napari_attention_unet.export.formats import FORMATS, SUFFIXES, export_model, output_path
from napari_attention_unet.export.network import ExportError

__all__ = ["FORMATS", "SUFFIXES", "ExportError", "export_model", "output_path"]
