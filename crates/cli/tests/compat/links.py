"""Fetching Stowage download links as any HTTP client would (no key): the
helpers the SDK scripts share."""

import io
import tarfile
import urllib.error
import urllib.request


def fetch_tar(url):
    """The names in the tar a download link serves, and its file name."""
    r = urllib.request.urlopen(url)
    assert r.headers["Content-Type"] == "application/x-tar", dict(r.headers)
    names = tarfile.open(fileobj=io.BytesIO(r.read())).getnames()
    return names, r.headers["Content-Disposition"]


def link_refused(url):
    """A changed link gets 403."""
    try:
        urllib.request.urlopen(url)
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
        return
    raise AssertionError("a changed link was accepted: " + url)
