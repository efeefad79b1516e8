from wbench.cli import main

raise SystemExit(main())
