"""A web viewer for radiance fields, on viser: ``radfield view RUN_DIR`` and
``radfield train ... --viewer``.

* :mod:`.poses`: camera poses between the browser (viser, OpenCV axes) and radfield (OpenGL);
* :mod:`.render_loop`: one browser's view rendered in a background thread, in bounded time per
  frame (lower resolution while the camera moves, full resolution when it stops);
* :mod:`.server`: the viser server, its scene (training cameras, scene box), its panels (render
  mode, time, training progress and pause, the camera-path editor).

viser is an optional dependency (``pip install 'radfield[viewer]'``); importing this package
does not need it, starting a viewer does.
"""

from radfield.viewer.render_loop import RENDER_MODES, Frame, RenderLoop, RenderSettings, View

__all__ = ["RENDER_MODES", "Frame", "RenderLoop", "RenderSettings", "View"]
