//! `swapcast import` (CONTRACT §5 v2): each file all or nothing, a bad row refused with its line,
//! and the import's counts and events reaching a server that is running meanwhile.

use std::path::Path;

use serde_json::Value;

use crate::helpers::{create_admin_cli, ChildAdmin, ChildServer};
use crate::wsclient::{Client, Socket};

/// Runs `swapcast import`; returns (success, stdout + stderr).
fn import(url: &str, flag: &str, file: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swapcast"))
        .args(["import", "--database-url", url, flag])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[actix_web::test]
async fn a_bad_row_is_refused_by_its_line_and_nothing_of_its_file_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("import.db").display());
    create_admin_cli(&url, "import@swapcast.test");

    let bad_stations = [
        (
            "name,address,status\nA,1 Rd,online\nB,,offline\nC,3 Rd,closed\n",
            "line 4",
        ),
        ("name,address,status\nA,1 Rd,online\n,2 Rd,online\n", "line 3"),
        ("name,addr\nA,1 Rd\n", "line 1"),
        ("name,address,status\nA,1 Rd,online,extra\n", "line 2"),
        // Lines as an editor numbers them, whatever the line endings and blank lines.
        ("name,address,status\r\nok1,a,online\r\nbad,a,closed\r\n", "line 3"),
        ("name,address,status\nok1,a,online\n\n\nbad,a,closed\n", "line 5"),
        (
            "name,address,status\r\n\"multi\r\nline\",\"a\r\nb\",online\r\nbad,a,closed\r\n",
            "line 2",
        ),
    ];
    for (text, line) in bad_stations {
        let (ok, said) = import(&url, "--stations", &write(dir.path(), "bad.csv", text));
        assert!(!ok, "accepted {text:?}");
        assert!(
            said.contains(line) && said.contains("nothing imported"),
            "{text:?}: {said}"
        );
    }
    // Quoted commas, an empty status (online), two stations of one name.
    let stations = "name,address,status\n\
        North,\"1 Harbour Rd, Keelung\",online\n\
        South,,\n\
        Twin,2 Rd,maintenance\n\
        Twin,3 Rd,online\n";
    let (ok, said) = import(&url, "--stations", &write(dir.path(), "stations.csv", stations));
    assert!(ok && said.contains("4 stations"), "{said}");

    let bad_batteries = [
        (
            "station,serial,model,soc,soh\nNorth,S-1,M,50,90\nNowhere,S-2,M,50,90\n",
            "line 3",
            "names no station",
        ),
        (
            "station,serial,model,soc,soh\nTwin,S-1,M,50,90\n",
            "line 2",
            "more than one station",
        ),
        ("station,serial,model,soc,soh\nNorth,S-1,M,101,90\n", "line 2", "soc"),
        ("station,serial,model,soc,soh\nNorth,S-1,M,half,90\n", "line 2", "soc"),
        ("station,serial,model,soc,soh\nNorth,S 1,M,50,90\n", "line 2", "serial"),
        (
            "station,serial,model,soc,soh\nNorth,S-1,M,50,90\nSouth,S-1,M,50,90\n",
            "line 3",
            "S-1",
        ),
        ("station,serial,soc\nNorth,S-1,50\n", "line 1", "model"),
    ];
    for (text, line, what) in bad_batteries {
        let (ok, said) = import(&url, "--batteries", &write(dir.path(), "bad.csv", text));
        assert!(!ok, "accepted {text:?}");
        assert!(said.contains(line) && said.contains(what), "{text:?}: {said}");
    }
    // A duplicate far apart, in different insert batches: still its own line.
    let mut long = String::from("station,serial,model,soc,soh\n");
    for i in 0..2_500 {
        long.push_str(&format!("North,LONG-{i},M,80,90\n"));
    }
    long.push_str("South,LONG-7,M,80,90\n");
    let (ok, said) = import(&url, "--batteries", &write(dir.path(), "long.csv", &long));
    assert!(!ok && said.contains("line 2502") && said.contains("LONG-7"), "{said}");

    // Nothing of the refused files is there; the good one goes in with its counts.
    let server = ChildServer::start(&url);
    let admin = ChildAdmin::sign_in(&server, "import@swapcast.test").await;
    let network = admin.get("/api/network").await;
    assert_eq!(network["stations"], 4);
    assert_eq!(network["total_batteries"], 0, "a refused file left batteries behind");
    let north = station_id(&admin, "North").await;
    assert_eq!(
        admin.get(&format!("/api/stations/{north}")).await["address"],
        "1 Harbour Rd, Keelung"
    );

    // While a dashboard watches, a good file goes in: its stations' new counts reach it.
    let feed = format!("ws://127.0.0.1:{}/ws/stations/", server.port);
    let (socket, _): (Socket, _) = tokio_tungstenite::connect_async(feed).await.unwrap();
    let mut watcher = Client { socket };
    let mut first = watcher.events(5).await;
    assert_eq!(first.remove(0)["type"], "connection_established");
    let batteries = "station,serial,model,soc,soh\nNorth,N-1,M,,\nNorth,N-2,M,30,80\nSouth,S-1,M,90,\n";
    let (ok, said) = import(&url, "--batteries", &write(dir.path(), "batteries.csv", batteries));
    assert!(ok && said.contains("3 batteries"), "{said}");
    let updates = watcher.events(2).await;
    let mut seen: Vec<(i64, i64)> = updates
        .iter()
        .map(|u| {
            assert_eq!(u["type"], "inventory_update", "{u}");
            (
                u["station_id"].as_i64().unwrap(),
                u["available_batteries"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let south = station_id(&admin, "South").await;
    let mut expected = vec![(north, 2), (south, 1)];
    expected.sort();
    assert_eq!(seen, expected);
    let n2: Value = admin.get(&format!("/api/stations/{north}/batteries")).await;
    let socs: Vec<i64> = n2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["soc"].as_i64().unwrap())
        .collect();
    assert_eq!(socs, [100, 30], "an empty soc is a full battery");
    let network = admin.get("/api/network").await;
    assert_eq!(
        (&network["available_batteries"], &network["total_batteries"]),
        (&3.into(), &3.into())
    );
}

async fn station_id(admin: &ChildAdmin, name: &str) -> i64 {
    let found = admin.get(&format!("/api/stations?q={name}")).await;
    found["items"][0]["id"].as_i64().unwrap()
}
