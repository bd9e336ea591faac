"""The serving benchmark's client works: against a real server, one session's page load shows the final grid.

It reuses benchmarks/serving.py's own server and session, so a change in Streamlit's protocol
breaks this test, not only the benchmark's figures. No timing is asserted (the suite runs on
busy machines). Skipped when the server cannot start here.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.serving import DIRECT, REQUEST_TIMEOUT_S, ServerDidNotStart, session, streamlit_server


def test_one_session_gets_the_final_grid(tmp_path):
    try:
        with streamlit_server(tmp_path) as port:
            results = asyncio.run(session(port, [1], deadline=time.monotonic() + REQUEST_TIMEOUT_S))
            assert [r.error for r in results] == [None]
            with DIRECT.open(f"http://127.0.0.1:{port}{results[0].image_url}", timeout=30) as image:
                assert image.headers.get_content_type().startswith("image/") and image.read()
    except ServerDidNotStart as e:
        pytest.skip(str(e))
