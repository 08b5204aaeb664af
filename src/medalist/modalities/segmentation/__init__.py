"""Semantic segmentation: masks in, run-length-encoded submissions out.

- :mod:`~medalist.modalities.segmentation.modality`: the ``segmentation`` modality (the protocol
  the stages use).
- :mod:`~medalist.modalities.segmentation.task`: its task: masks as targets, the loss, Dice and
  IoU per image, validation from pixel counts batch by batch.
- :mod:`~medalist.modalities.segmentation.predictions`: the mask files the stages write (OOF,
  test), the post-processing chosen on OOF, the RLE submission, the offline bundle's masks.
- :mod:`~medalist.modalities.segmentation.blend`: ensembles of masks (mean, hill climbing) with
  nested CV.
- :mod:`~medalist.modalities.segmentation.data`, :mod:`~medalist.modalities.segmentation.inputs`,
  :mod:`~medalist.modalities.segmentation.model`: the datasets, the input checks, smp models on
  timm encoders.
- :mod:`~medalist.modalities.segmentation.rle`: run-length encoding in column-major or row-major
  pixel order (1-based starts), strict decoding, and a plausibility check of the configured order.
- :mod:`~medalist.modalities.segmentation.masks`: training targets from mask image files (one per
  image or one per class) or from RLE columns of the train table, checked before training.
- :mod:`~medalist.modalities.segmentation.store`: probability masks of a fold quantised to uint8 in
  one safetensors file with the id order, read back and averaged across experiments.
- :mod:`~medalist.modalities.segmentation.submission`: the RLE submission writer and validator.
- :mod:`~medalist.modalities.segmentation.losses`: segmentation losses.
- :mod:`~medalist.modalities.segmentation.scoring`: Dice and IoU scores.
- :mod:`~medalist.modalities.segmentation.tiling`: tiled prediction of large images.
- :mod:`~medalist.modalities.segmentation.views`: TTA views undone on the predicted mask.
- :mod:`~medalist.modalities.segmentation.postprocess`: thresholds and minimum component sizes.
- :mod:`~medalist.modalities.segmentation.tta_oof`: the OOF masks predicted with the test-time
  views, and the post-processing searched on them (``infer.tta_oof``).
- :mod:`~medalist.modalities.segmentation.seeds`: the seed-averaged model's masks
  (``train.seeds``).
- :mod:`~medalist.modalities.segmentation.distill`: a teacher's soft masks of each fold's training
  images, mixed with the true masks (``medalist distill``, ``distill.teacher``).
- :mod:`~medalist.modalities.segmentation.sanity`: the leak alarm's masks, exchanged within
  (fold, image size) blocks, and their scores (``medalist sanity``).
- :mod:`~medalist.modalities.segmentation.report`: the HTML report's mask sections (``medalist
  report``).
"""
