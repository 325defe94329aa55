//! `conformance-echo [ADDR]`: the Autobahn suite's echo endpoint on swapcast's socket layer
//! (default `127.0.0.1:9001`). Built only with `--features conformance`; see `.ci/run`.

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("conformance echo on {}", listener.local_addr()?);
    actix_web::rt::System::new().block_on(swapcast::ws::conformance::serve(listener))
}
