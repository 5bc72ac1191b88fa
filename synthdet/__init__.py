"""`synthdet`: the user's tool (command line, local serving, bench, QR, doctor, demo model).

A thin layer over library functions: `serving` (what TorchServe is handed),
`bootstrap` (getting a host to serve) and `handler` (what runs in TorchServe).
The Pulumi program (`infra/`) calls the same libraries (`serving.qr` for the QR
code at the end of `pulumi up`) and nothing in this package.
"""
