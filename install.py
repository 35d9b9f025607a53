"""Run by the WebUI at start-up (in its own venv): install only what the host lacks.

A1111 1.10 and Forge 2 both ship torch and einops, so normally this installs nothing.
"""
import launch

REQUIREMENTS = {"einops": "einops"}

for module, requirement in REQUIREMENTS.items():
    if not launch.is_installed(module):
        launch.run_pip(f"install {requirement}", f"{requirement} for sd-webui-tilesampler")
