import sys

from enclave.runtime.main import main

sys.exit(main())
