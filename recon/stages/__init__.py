"""The DVC stages' commands (``python -m recon.stages.<stage>``): each reads the params, then
calls the pipeline layer; dvc.yaml names every path in their ``cmd``."""
