"""Reports of anomaly maps: whole-scan stitching, regions, overlays, HTML, tables, galleries.

Modules (imported on demand, so `import xray_flax.report.tables` stays light):
  stitch   streamed whole-scan anomaly maps from overlapping, window-blended tiles
  regions  connected regions above a threshold -> JSON / CSV
  overlay  colour maps, thumbnails, overlay PNGs (transparent where normal), float32 map files
  html     one self-contained HTML report per scan (zoom and pan)
  tables   metrics.json -> Markdown in the columns of the paper's Table 2
  gallery  input | reconstruction | anomaly map | ground truth patch grids
  plots    SVG line plots with round ticks
"""
