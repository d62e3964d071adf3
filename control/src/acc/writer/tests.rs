use super::*;

fn rec(seq: u64, table: Table, extra: bool) -> Record {
    let mut cols = vec![
        ("method".into(), Value::Text("INVITE".into())),
        ("time".into(), Value::Time(0)),
    ];
    if extra {
        cols.push(("src_user".into(), Value::Text("a".into())));
    }
    Record {
        stream: 1,
        seq,
        row: Row { table, cols },
    }
}

#[test]
fn statements_group_runs_and_keep_order() {
    let recs = vec![
        rec(0, Table::Acc, false),
        rec(1, Table::Acc, false),
        rec(2, Table::Missed, false),
        rec(3, Table::Acc, true),
    ];
    let pg = insert_statements(&recs, &TableNames::default(), true);
    assert_eq!(pg.len(), 3);
    assert_eq!(
        pg[0].0,
        "INSERT INTO acc (\"method\", \"time\") VALUES ($1, CAST($2 AS TIMESTAMP)), ($3, CAST($4 AS TIMESTAMP))"
    );
    assert_eq!(pg[0].1.len(), 4);
    assert!(pg[1].0.starts_with("INSERT INTO missed_calls "));
    assert_eq!(
        pg[2].0,
        "INSERT INTO acc (\"method\", \"time\", \"src_user\") VALUES ($1, CAST($2 AS TIMESTAMP), $3)"
    );
    let my = insert_statements(&recs[..2], &TableNames::default(), false);
    assert_eq!(
        my[0].0,
        "INSERT INTO acc (`method`, `time`) VALUES (?, ?), (?, ?)"
    );
}

#[test]
fn new_checks_config_and_queue_counts() {
    let q = Arc::new(RowQueue::new(1));
    let dir = std::env::temp_dir().join(format!("sipvane-acc-writer-{}", std::process::id()));
    let cfg = WriterConfig {
        db_url: "postgres://u:p@127.0.0.1:1/db".into(),
        spool_path: dir.join("acc.spool"),
        ..WriterConfig::default()
    };
    assert!(matches!(
        Writer::new(
            WriterConfig {
                db_url: "redis://x".into(),
                ..cfg.clone()
            },
            q.clone()
        ),
        Err(AccError::Url(_))
    ));
    assert!(matches!(
        Writer::new(
            WriterConfig {
                spool_table: "a;b".into(),
                ..cfg.clone()
            },
            q.clone()
        ),
        Err(AccError::Table(_))
    ));
    let w = Writer::new(cfg, q.clone()).unwrap();
    let row = rec(0, Table::Acc, false).row;
    q.push(row.clone());
    q.push(row);
    let s = w.stats();
    assert_eq!((s.rows(), s.dropped_queue_full(), s.queued()), (2, 1, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn database_down_spools_everything_in_order_within_the_grace() {
    // Port 1 refuses at once: every row must end up in the journal.
    let dir = std::env::temp_dir().join(format!("sipvane-acc-writer-down-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let q = Arc::new(RowQueue::new(100));
    let cfg = WriterConfig {
        db_url: "postgres://u:p@127.0.0.1:1/db".into(),
        spool_path: dir.join("acc.spool"),
        flush_interval: Duration::from_millis(10),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        shutdown_grace: Duration::from_millis(200),
        ..WriterConfig::default()
    };
    let w = Writer::new(cfg.clone(), q.clone()).unwrap();
    let stats = w.stats();
    for i in 0..30 {
        q.push(rec(i, Table::Acc, false).row);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = std::time::Instant::now();
    rt.block_on(async { w.run(tokio::time::sleep(Duration::from_millis(100))).await });
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(stats.spooled(), 30);
    assert_eq!(stats.written(), 0);
    assert!(stats.db_errors() >= 1);
    let (mut j, rep) = Journal::open(&cfg.spool_path, cfg.spool_max_bytes).unwrap();
    assert_eq!(rep.records, 30);
    let seqs: Vec<u64> = j
        .peek(100)
        .unwrap()
        .records
        .iter()
        .map(|(r, _)| r.seq)
        .collect();
    assert_eq!(seqs, (0..30).collect::<Vec<u64>>());
    drop(j);

    // A second run, the spool bounded to about ten more rows: the rest
    // are dropped, counted, and nothing already spooled is lost.
    let mut one = Vec::new();
    super::super::journal::encode(&rec(0, Table::Acc, false), &mut one);
    let bytes = std::fs::metadata(&cfg.spool_path).unwrap().len();
    let cfg = WriterConfig {
        spool_max_bytes: bytes + 10 * one.len() as u64 + 3,
        ..cfg
    };
    let w = Writer::new(cfg.clone(), q.clone()).unwrap();
    let stats = w.stats();
    for i in 0..25 {
        q.push(rec(i, Table::Acc, false).row);
    }
    rt.block_on(async { w.run(tokio::time::sleep(Duration::from_millis(100))).await });
    assert_eq!((stats.spooled(), stats.dropped_spool_full()), (10, 15));
    assert_eq!(stats.spool_rows(), 40);
    let (_, rep) = Journal::open(&cfg.spool_path, cfg.spool_max_bytes).unwrap();
    assert_eq!((rep.records, rep.truncated_bytes), (40, 0));
    let _ = std::fs::remove_dir_all(&dir);
}
