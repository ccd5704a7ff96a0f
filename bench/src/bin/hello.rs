//! The floor for cold-start figures: a Lambda that echoes its event, with lambda_runtime and
//! nothing else (no SDK, no logging setup).

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    run(service_fn(|event: LambdaEvent<Value>| async {
        Ok::<_, Error>(event.payload)
    }))
    .await
}
