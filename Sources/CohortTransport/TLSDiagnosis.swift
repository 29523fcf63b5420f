import GRPCCore

/// Which TLS check failed, in words a device's operator can act on: a device that cannot
/// connect says why (the server's CA, the server's name, a missing or untrusted device
/// certificate, a server without TLS) instead of retrying with one generic line.
enum TLSDiagnosis {
  /// The TLS failure behind a failed call, if it was one.
  static func explain(_ error: any Error) -> String? {
    // The cause chain's descriptions, outermost first (gRPC wraps NIO's and BoringSSL's errors).
    var texts: [String] = []
    var next: (any Error)? = error
    while let e = next, texts.count < 8 {
      texts.append(String(reflecting: e))
      next = (e as? RPCError)?.cause ?? (e as? RuntimeError)?.cause
    }
    let all = texts.joined(separator: " | ").uppercased()
    let rules: [([String], String)] = [
      (
        ["CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"],
        "the server requires a device certificate (mutual TLS): give --cert and --key"
      ),
      (
        ["ALERT_UNKNOWN_CA", "TLSV1_ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE"],
        "the server does not trust this device's certificate (another CA than its --client-ca signed it)"
      ),
      (
        ["FAILEDTOVALIDATEHOSTNAME", "HOSTNAME"],
        "the server's certificate does not name the host in --server: connect by a name or address it lists"
      ),
      (
        ["CERTIFICATE_VERIFY_FAILED", "UNABLE_TO_GET_ISSUER", "SELF_SIGNED", "UNKNOWN ISSUER"],
        "the server's certificate is not signed by the CA in --ca: give the CA that signed it"
      ),
      (
        ["WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNEXPECTED_RECORD"],
        "the server does not speak TLS (started with --insecure?): use --insecure only with such a server"
      ),
    ]
    for (markers, explanation) in rules where markers.contains(where: all.contains) {
      return "TLS: \(explanation)"
    }
    if all.contains("HANDSHAKE") || all.contains("SSL") {
      return "TLS handshake failed: \(texts.last ?? "")"
    }
    return nil
  }
}
