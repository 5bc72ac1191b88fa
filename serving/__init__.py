"""What TorchServe is handed, shared by the `synthdet` tool and the installer.

Settings (`settings`), the model archive (`archive`), TorchServe's
`config.properties` (`torchserve_config`), certificates (`certs`), the
endpoint URLs (`endpoint`) and their QR codes (`qr`), the phone client's contract (`contract`), the web
viewer page (`viewer`) and the one inputs-hash helper (`inputs`). It imports
the handler and nothing from `bootstrap/`, `synthdet/` or `infra/`, which all
import it.
"""
