"""HTTP helpers for the Glance integration tests (straight to Glance, not through reconcile)."""

from __future__ import annotations

from typing import Any

import httpx

TOKEN = "glance-integration-token"  # the noauth pipeline accepts any token
JSON = {"Accept": "application/json"}  # webob answers JSON errors instead of HTML


def list_images(url: str) -> list[dict[str, Any]]:
    """Every image Glance lists (all pages), straight over HTTP."""
    images: list[dict[str, Any]] = []
    next_url: str | None = "/v2/images?limit=200"
    with httpx.Client(base_url=url, headers={**JSON, "X-Auth-Token": TOKEN}) as http:
        while next_url:
            response = http.get(next_url)
            response.raise_for_status()
            page = response.json()
            images.extend(page["images"])
            next_url = page.get("next")
    return images


def delete_image(url: str, image: dict[str, Any]) -> None:
    """DELETE an image; a protected one is unprotected first."""
    headers = {**JSON, "X-Auth-Token": TOKEN}
    with httpx.Client(base_url=url, headers=headers) as http:
        if image.get("protected"):
            patch = http.patch(
                f"/v2/images/{image['id']}",
                content=b'[{"op": "replace", "path": "/protected", "value": false}]',
                headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
            assert patch.status_code == 200, patch.text
        response = http.delete(f"/v2/images/{image['id']}")
        assert response.status_code == 204, f"DELETE {image['id']}: {response.text}"
