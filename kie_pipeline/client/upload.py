"""Kie's File Upload API (``https://kieai.redpandaai.co``, the same Bearer key): local files in, public
URLs out. Uploads are free; Kie deletes each file 3 days after its upload.

:meth:`AsyncKieClient.upload_file` sends a file with ``POST /api/file-stream-upload`` (multipart:
``file``, ``uploadPath``, ``fileName``), the endpoint Kie advises for any size. This module holds what
the client and the pipeline share about it: the documented paths and rules, the decoding of an answer
(``downloadUrl``, or ``fileUrl`` in one version of the docs), and the image types a model accepts.
"""

from __future__ import annotations

from typing import Any

from .errors import KieProtocolError, KieValidationError
from .models import UploadedFile
from .registry import is_http_url

#: Kie's File Upload API.
DEFAULT_UPLOAD_URL = "https://kieai.redpandaai.co"
STREAM_UPLOAD_PATH = "/api/file-stream-upload"
BASE64_UPLOAD_PATH = "/api/file-base64-upload"
URL_UPLOAD_PATH = "/api/file-url-upload"
#: Kie deletes uploaded files this many seconds after the upload (kie-models.md section 7).
UPLOAD_RETENTION_S = 3 * 24 * 3600.0
#: The folder (``uploadPath``) our uploads go to.
DEFAULT_UPLOAD_FOLDER = "kie-pipeline"

#: Image types Kie's models accept as inputs (jpeg, png, webp: kie-api-docs.md, kie-models.md s. 6),
#: by the file's first bytes: a file's name can lie, its content cannot.
_MAGIC: tuple[tuple[str, bytes, int], ...] = (
    ("image/png", b"\x89PNG\r\n\x1a\n", 0),
    ("image/jpeg", b"\xff\xd8\xff", 0),
    ("image/webp", b"WEBP", 8),
)
IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type of an accepted image (png, jpeg, webp) from its first 12 bytes, else None."""
    for mime, magic, offset in _MAGIC:
        if head[offset : offset + len(magic)] == magic and (mime != "image/webp" or head[:4] == b"RIFF"):
            return mime
    return None


def check_upload_path(upload_path: str) -> str:
    """``upload_path`` if Kie accepts it (not empty, no leading or trailing slash); raises otherwise."""
    if not upload_path or upload_path != upload_path.strip("/") or "//" in upload_path:
        raise KieValidationError(
            f"uploadPath {upload_path!r} must be a non-empty folder without leading or trailing '/'.",
            code=None,
            field="uploadPath",
        )
    return upload_path


def uploaded_file(data: Any, endpoint: str = "file-stream-upload") -> UploadedFile:
    """Decode the ``data`` of a successful upload answer; its URL is ``downloadUrl`` or ``fileUrl``."""
    if not isinstance(data, dict):
        raise KieProtocolError(f"Kie {endpoint} answered without a data object.")
    url = data.get("downloadUrl") or data.get("fileUrl")
    if not isinstance(url, str) or not is_http_url(url):
        raise KieProtocolError(f"Kie {endpoint} answered without a downloadUrl or fileUrl.")
    size = data.get("fileSize")
    return UploadedFile(
        url=url,
        file_name=data.get("fileName"),
        file_path=data.get("filePath"),
        size=int(size)
        if isinstance(size, (int, float)) or (isinstance(size, str) and size.isdigit())
        else None,
        mime_type=data.get("mimeType"),
        uploaded_at=data.get("uploadedAt") or data.get("uploadTime"),
    )
