from sharpdro.cli import main

raise SystemExit(main())
