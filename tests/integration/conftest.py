import pytest

from webui import BASELINE_VAR, WebUI, auth_webui_from_env, webui_from_env


@pytest.fixture(scope="session")
def webui() -> WebUI:
    return webui_from_env()


@pytest.fixture(scope="session")
def baseline() -> WebUI:
    """A second WebUI started WITHOUT this extension, for 'off == not installed'."""
    return webui_from_env(BASELINE_VAR)


@pytest.fixture(scope="session")
def authed() -> WebUI:
    """A WebUI started with --api-auth, called with its credentials."""
    return auth_webui_from_env()
