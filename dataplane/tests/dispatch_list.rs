//! `dispatcher.list` parsing: a real Kamailio file, and every error kind with
//! its line number.

use dataplane::dispatch::{parse_attrs, parse_list, Attrs};

const KAMAILIO_SAMPLE: &str = "\
#
# dispatcher destination sets (groups)
#

# line format
# setid(int) destination(sip uri) flags(int,opt) priority(int,opt) attributes(str,opt)

# proxies
2 sip:127.0.0.1:5080;transport=tcp 0 10 class=4;prefix=448;strip=2
2 sip:127.0.0.1:5082;px=vx 0 5 duid=abc;socket=udp:192.168.0.125:5060;pipe=p10

# gateways
1 sip:127.0.0.1:7070 0 0 duid=xyz;maxload=20
1 sip:127.0.0.1:7072 0 5
1 sip:127.0.0.1:7074
1\tsip:127.0.0.1:5080\t0x8\t0\tduid=abc;socket=udp:192.168.0.125:5060;my=xyz;ping_from=sip:myproxy.com
3 sip:192.168.0.1:5060 0 12 rweight=50;weight=50;cc=1; congestion-controlled pool
";

#[test]
fn parses_the_kamailio_sample() {
    let defs = parse_list(KAMAILIO_SAMPLE).unwrap();
    assert_eq!(defs.len(), 7);
    let d = &defs[0];
    assert_eq!((d.set, d.line, d.priority), (2, 9, 10));
    assert_eq!(d.uri, "sip:127.0.0.1:5080;transport=tcp");
    assert_eq!(d.attrs.get("prefix"), Some("448"));
    assert_eq!(d.attrs_raw, "class=4;prefix=448;strip=2");
    let d = &defs[2];
    assert_eq!(d.attrs.duid.as_deref(), Some("xyz"));
    assert_eq!(d.attrs.maxload, 20);
    let d = &defs[4];
    assert_eq!((d.flags, d.priority), (0, 0));
    assert_eq!(d.attrs, Attrs::default());
    let d = &defs[5];
    assert_eq!(d.flags, 8);
    assert_eq!(d.attrs.ping_from.as_deref(), Some("sip:myproxy.com"));
    assert_eq!(d.attrs.get("my"), Some("xyz"));
    let d = &defs[6];
    assert_eq!((d.attrs.weight, d.attrs.rweight), (50, 50));
    assert_eq!(d.description, "congestion-controlled pool");
}

#[test]
fn every_error_kind_with_its_line() {
    let text = "\
1 sip:ok.example
abc sip:a
-3 sip:a
4294967296 sip:a
7
1 tel:+123
1 sip:
1 sip:a 0xZZ
1 sip:a 64
1 sip:a 0 1.5
1 sip:a 0 0 weight=101
1 sip:a 0 0 rweight=0
1 sip:a 0 0 maxload=-5
1 sip:a 0 0 duid=
1 sip:a 0 0 =x
1 sip:a 0 0 weight=1;weight=2
# fine
2 sips:ok.example:5061 3 -7 maxload=10
";
    let errs = parse_list(text).unwrap_err();
    let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let want = [
        "line 2: invalid set id 'abc': expected a non-negative integer",
        "line 3: invalid set id '-3': expected a non-negative integer",
        "line 4: invalid set id '4294967296': larger than 4294967295",
        "line 5: set 7: missing destination URI",
        "line 6: invalid destination 'tel:+123': expected a sip: or sips: URI",
        "line 7: invalid destination 'sip:': missing host",
        "line 8: invalid flags '0xZZ': expected a decimal or 0x hex integer",
        "line 9: invalid flags '64': unknown bits 0x40 (known: 1 inactive, 2 trying, 4 disabled, 8 probing, 16 no-dns)",
        "line 10: invalid priority '1.5': expected an integer",
        "line 11: invalid weight '101': expected an integer 0..=100",
        "line 12: invalid rweight '0': expected an integer 1..=100",
        "line 13: invalid maxload '-5': expected a non-negative integer",
        "line 14: attribute 'duid' needs a value",
        "line 15: invalid attribute '=x': missing name before '='",
        "line 16: duplicate attribute 'weight'",
    ];
    assert_eq!(got, want);
    // The caller prefixes the file name.
    assert_eq!(
        format!("/etc/sipvane/dispatcher.list:{}", errs[0]),
        "/etc/sipvane/dispatcher.list:line 2: invalid set id 'abc': expected a non-negative integer"
    );
    assert_eq!(errs[0].line, 2);
}

#[test]
fn attrs_from_a_database_row() {
    let a = parse_attrs("weight=25; duid = gw1 ;maxload=300;obproxy=sip:edge.example").unwrap();
    assert_eq!(a.weight, 25);
    assert_eq!(a.duid.as_deref(), Some("gw1"));
    assert_eq!(a.maxload, 300);
    assert_eq!(a.obproxy.as_deref(), Some("sip:edge.example"));
    assert!(a.other.is_empty());
}

#[test]
fn empty_and_comment_only_files() {
    assert!(parse_list("").unwrap().is_empty());
    assert!(parse_list("# nothing\n\n   \n\t# still nothing\r\n")
        .unwrap()
        .is_empty());
}
