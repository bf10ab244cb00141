"""Camera poses as variables: Lie-group maths for pose corrections, per-image corrections and
pose errors (:mod:`radfield.poses.se3`, :mod:`radfield.poses.corrections`), and distributions
over poses whose samples are differentiable in their parameters
(:mod:`radfield.poses.distribution`, Neural-Sim).

Renders differentiable in the pose are :func:`radfield.rendering.differentiable.render_images_grad`;
fitting one camera to an image against a trained field is
:func:`radfield.evaluation.localize.fit_pose`.
"""
