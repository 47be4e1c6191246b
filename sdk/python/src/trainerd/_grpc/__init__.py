"""gRPC stubs generated from proto/trainerd.proto when the package is built (setup.py); never
edited by hand. The proto they were generated from is installed beside them."""
