"""P12 (tiles): tiled inference with overlap, tiles batched, against the same tiles one by one.

A tiny segmentation-models-pytorch U-Net (timm's ``test_resnet`` encoder, random weights, one
output channel, in eval mode under ``no_grad``) predicts a 3 x 256 x 256 image in 64 px tiles
overlapping by 16 px: 5 x 5 = 25 tiles, blended with the Hann window.

- A: :func:`medalist.modalities.segmentation.tiling.predict_tiled`, ``batch_size`` 16 tiles
  per forward pass (two passes).
- B: the plain loop: for each tile, one forward pass of that tile alone, its sigmoid weighted by
  the same window and added in place, then the same division by the summed weights.

Both start from the same image tensor and do the same blending; their masks are checked equal
before timing. The ratio is a speed-up, B / A (higher is better). On a CPU what batching saves
is the per-pass cost of a forward (every layer's dispatch, small kernels): much for small tiles
of a small network, as here; for tiles whose compute dominates, nothing (this network on 128 px
and 256 px tiles, one thread: 0.99 and 0.96, with the CPU's cap on values per pass).
"""

from __future__ import annotations

import torch

from benchmarks.harness import NotAvailable, benchmark, measure

SIZE, TILE, OVERLAP, BATCH = 256, 64, 16, 16


@benchmark(
    "P12-tiles", target=">=1.5", title="segmentation: tiled inference batched vs tile by tile"
)
def tiled() -> dict:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise NotAvailable("pip install 'medalist[segmentation]'") from None

    from medalist.modalities.segmentation.tiling import predict_tiled, tile_boxes, window

    torch.manual_seed(0)
    model = smp.Unet("tu-test_resnet", encoder_weights=None, classes=1).eval()
    image = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    boxes, weights = tile_boxes(SIZE, SIZE, TILE, OVERLAP), window(TILE)

    def probabilities(tiles: torch.Tensor) -> torch.Tensor:
        return model(tiles).sigmoid()

    def batched() -> torch.Tensor:
        return predict_tiled(probabilities, image, TILE, OVERLAP, batch_size=BATCH)

    @torch.no_grad()
    def tile_by_tile() -> torch.Tensor:
        out, total = torch.zeros(1, SIZE, SIZE), torch.zeros(SIZE, SIZE)
        for top, left in boxes:
            tile = image[None, :, top : top + TILE, left : left + TILE]
            out[:, top : top + TILE, left : left + TILE] += model(tile).sigmoid()[0] * weights
            total[top : top + TILE, left : left + TILE] += weights
        return out / total

    torch.testing.assert_close(batched(), tile_by_tile(), rtol=1e-4, atol=1e-5)
    result = measure(batched, tile_by_tile, warmup=2, repeats=15, budget_s=20, throughput=True)
    result.update(tiles=len(boxes), batch_size=BATCH, tile=TILE, overlap=OVERLAP)
    return result
