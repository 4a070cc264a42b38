"""The model server: repository (versions, hot reload), batching, auth, metrics, and the HTTP app.

It speaks TF Serving's REST API v1 and the Open Inference Protocol v2 (KServe, Triton).
"""
