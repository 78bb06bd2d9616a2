"""ppml.proto: the shared core every side imports (wire contract, domain types, deployment
contract); it imports no other ppml package."""
