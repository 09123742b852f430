"""A sample application for the deployment (docker-compose.yml, deploy/systemd/): a small shop whose
models are its own and whose every write goes through DualWriter. `sampleapp.models:tables` is what
`dualwrite --metadata` takes; `sampleapp.wsgi:app` is what gunicorn serves."""
