"""client.download(): governed, atomic, typed."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import httpx
import pytest

from apientreprise_async import (
    AsyncClient,
    Limits,
    NotFoundError,
    TransportError,
    UnexpectedPayloadError,
)
from apientreprise_async._catalogue import GROUP_LIMITS

from .conftest import TOKEN

pytestmark = pytest.mark.anyio

PDF = b"%PDF-1.4\n" + b"x" * 100_000 + b"\n%%EOF\n"
URL = "https://storage.example.test/files/attestation.pdf"


def client_for(handler: httpx.MockTransport) -> AsyncClient:
    limits = Limits(groups=dict.fromkeys(GROUP_LIMITS, 1000), period=1.0)
    return AsyncClient(token=TOKEN, transport=handler, limits=limits)


def leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_download_writes_the_whole_file(tmp_path: pathlib.Path) -> None:
    """A PDF lands at the destination; the token stays with the API host."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PDF, headers={"Content-Type": "application/pdf"})

    async with client_for(httpx.MockTransport(handle)) as client:
        written = await client.download(URL, tmp_path / "a.pdf")
    assert tmp_path / "a.pdf" == written
    assert PDF == written.read_bytes()
    assert ["a.pdf"] == leftovers(tmp_path)
    assert "authorization" not in seen[0].headers


async def test_download_into_a_directory_uses_the_url_name(tmp_path: pathlib.Path) -> None:
    """An existing directory as destination gets the URL's file name."""
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, content=PDF, headers={"Content-Type": "application/pdf"})
    )
    async with client_for(transport) as client:
        written = await client.download(URL, tmp_path)
    assert tmp_path / "attestation.pdf" == written


async def test_wrong_content_type_writes_nothing(tmp_path: pathlib.Path) -> None:
    """An HTML page instead of a PDF raises and leaves no file behind."""
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, content=b"<html>", headers={"Content-Type": "text/html"})
    )
    async with client_for(transport) as client:
        with pytest.raises(UnexpectedPayloadError, match="text/html"):
            await client.download(URL, tmp_path / "a.pdf")
    assert [] == leftovers(tmp_path)


async def test_any_content_type_when_asked(tmp_path: pathlib.Path) -> None:
    """content_types=None accepts whatever comes."""
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, content=b"a,b\n", headers={"Content-Type": "text/csv"})
    )
    async with client_for(transport) as client:
        written = await client.download(URL, tmp_path / "a.csv", content_types=None)
    assert b"a,b\n" == written.read_bytes()


async def test_broken_transfer_leaves_no_partial_file(tmp_path: pathlib.Path) -> None:
    """A connection dropped mid-body raises TransportError; neither file nor temp remains."""
    (tmp_path / "a.pdf").write_bytes(b"previous version")

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield PDF[:1000]
            raise httpx.ReadError("connection reset")

    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, stream=Broken(), headers={"Content-Type": "application/pdf"})
    )
    async with client_for(transport) as client:
        with pytest.raises(TransportError, match="transfer broke"):
            await client.download(URL, tmp_path / "a.pdf")
    assert ["a.pdf"] == leftovers(tmp_path)
    assert b"previous version" == (tmp_path / "a.pdf").read_bytes()


async def test_error_status_maps_to_its_exception(tmp_path: pathlib.Path) -> None:
    """An expired link (404 with JSON:API errors) raises NotFoundError, writes nothing."""
    body = {"errors": [{"code": "00404", "title": "Introuvable"}]}
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json=body))
    async with client_for(transport) as client:
        with pytest.raises(NotFoundError) as info:
            await client.download(URL, tmp_path / "a.pdf")
    assert ("00404",) == info.value.codes
    assert [] == leftovers(tmp_path)


async def test_download_uses_the_download_bucket_and_timeout(tmp_path: pathlib.Path) -> None:
    """The document bucket is asked for a permit; the download timeout is applied."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PDF, headers={"Content-Type": "application/pdf"})

    async with client_for(httpx.MockTransport(handle)) as client:
        permits: list[str] = []
        original = client.governor.permit

        def spy(token: str, endpoint: object, **kw: object) -> object:
            permits.append(getattr(endpoint, "operation_id", ""))
            return original(token, endpoint, **kw)  # type: ignore[arg-type]

        client.governor.permit = spy  # type: ignore[method-assign]
        await client.download(URL, tmp_path / "a.pdf")
    assert ["api_entreprise_proxied_files"] == permits
    assert client.settings.timeouts.download == seen[0].extensions["timeout"]["read"]


async def test_refuses_a_non_http_url(tmp_path: pathlib.Path) -> None:
    """A file:// or relative URL is refused before anything is sent."""
    transport = httpx.MockTransport(lambda r: httpx.Response(500))
    async with client_for(transport) as client:
        with pytest.raises(ValueError, match="document_url"):
            await client.download("file:///etc/passwd", tmp_path / "a")


class Chunks(httpx.AsyncByteStream):
    """A PDF in a few chunks; notes when its iteration has been finalized."""

    def __init__(self) -> None:
        self.finalized = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for start in range(0, len(PDF), 32_768):
                yield PDF[start : start + 32_768]
        finally:
            self.finalized = True


async def test_a_failed_write_closes_the_answer_stream_at_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk stops the download with the OS error; the answer's stream is finalized
    then, not when the error is collected (under trio, after the run, with a warning)."""
    stream = Chunks()
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, stream=stream, headers={"Content-Type": "application/pdf"})
    )

    async def full(self: object, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(anyio.AsyncFile, "write", full)
    async with client_for(transport) as client:
        with pytest.raises(OSError, match="No space left") as info:
            await client.download(URL, tmp_path / "a.pdf")
        for _ in range(3):  # a finalizer scheduled by the event loop runs within a few turns
            await anyio.lowlevel.checkpoint()
        assert stream.finalized, info.value
    assert [] == leftovers(tmp_path)
