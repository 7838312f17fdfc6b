from wapool.cli.main import main

raise SystemExit(main())
