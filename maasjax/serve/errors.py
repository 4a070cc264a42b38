"""One exception for every refused request: an HTTP status and one message naming what was wrong."""


class ServeError(Exception):
  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status = status
    self.message = message
    self.headers = headers  # e.g. Allow on a 405
