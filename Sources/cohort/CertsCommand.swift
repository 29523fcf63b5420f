import ArgumentParser
import CohortCore
import CohortOperations
import CohortTransport

struct CertsCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "certs",
    abstract: "Development certificates for TLS between the server and devices.",
    discussion: """
      The server and devices authenticate each other with certificates signed by \
      one CA (mutual TLS). `cohort certs create` makes a throwaway CA with a \
      server certificate and device certificates, for trying Cohort out on one \
      machine or a test network. In production, issue certificates from your \
      own PKI and keep the CA key off the server.

        cohort certs create --out certs
        cohort certs create --out certs --hosts fl.example.com,10.0.0.5 --devices 10
      """,
    subcommands: [Create.self])
}

extension CertsCommand {
  struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Make a development CA, a server certificate and device certificates.",
      discussion: """
        Writes into the --out directory (created if missing):

          ca.pem              the CA certificate: the server and devices trust it
          ca-key.pem          the CA's private key: it can issue certificates
                              both sides trust, so keep it off servers and devices
          server.pem          the server's certificate (serverAuth), naming
                              localhost, 127.0.0.1, ::1 and each --hosts entry
          server-key.pem      the server's private key
          device-<n>.pem      device n's certificate (clientAuth, common name
                              device-<n>), for n = 1 … --devices
          device-<n>-key.pem  device n's private key
          device-<n>-signing.key
                              device n's Ed25519 signing key (libsodium), for
                              active secure aggregation; its public half is in
                              device-<n>.pem, extension 2.25.7311430286612045917

        Keys are PKCS#8 PEM with mode 0600; certificates are PEM. A --hosts entry \
        that is an IPv4 or IPv6 address becomes an IP subject alternative name, \
        anything else a DNS name: list every name and address devices use to \
        reach the server. Certificates are valid from an hour ago (allowing for \
        clock skew) for --days days. Existing files are kept unless --force.

        The server presents server.pem and accepts devices whose certificates \
        chain to --client-ca; a device checks the server against --ca and \
        presents its own certificate:

          cohort serve --tls-cert certs/server.pem --tls-key certs/server-key.pem \\
            --client-ca certs/ca.pem
          cohort device --ca certs/ca.pem \\
            --cert certs/device-1.pem --key certs/device-1-key.pem
        """)

    @Option(help: ArgumentHelp("The directory to write the certificates and keys into.", valueName: "dir"))
    var out: String

    @Option(
      parsing: .singleValue,
      help: ArgumentHelp(
        "Host names or IP addresses the server is reached at, besides localhost, 127.0.0.1 and ::1; "
          + "comma-separated or repeated.",
        valueName: "hosts"))
    var hosts: [String] = []

    @Option(help: "How many device certificates to make (device-1 … device-N).")
    var devices = 3

    @Option(help: "How many days the certificates are valid.")
    var days = 365

    @Flag(help: "Replace existing files in the --out directory.")
    var force = false

    /// `--hosts a,b --hosts c` as [a, b, c].
    var hostList: [String] {
      hosts.flatMap { $0.split(separator: ",") }.map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
    }

    func validate() throws {
      guard devices >= 0 else { throw ValidationError("--devices must be 0 or more, got \(devices)") }
      guard days >= 1 && days <= 36_500 else {
        throw ValidationError("--days must be between 1 and 36500, got \(days)")
      }
      guard !out.isEmpty else { throw ValidationError("--out must name a directory") }
    }

    func run() throws {
      let paths: [String]
      do {
        let certificates = try DevelopmentCertificates.make(
          hosts: hostList, devices: devices, validity: .seconds(days * 24 * 60 * 60))
        paths = try certificates.write(to: out, force: force)
      } catch let error as CohortError {
        throw error.exit()
      }
      let names = (hostList + DevelopmentCertificates.defaultHosts).reduce(into: [String]()) {
        if !$0.contains($1) { $0.append($1) }
      }
      print("Wrote \(paths.count) files to \(out) (valid for \(days) days):")
      for path in paths { print("  \(path)") }
      print("The server certificate names: \(names.joined(separator: ", "))")
      print(
        """
        Start the server with:
          cohort serve --tls-cert \(join(out, "server.pem")) --tls-key \(join(out, "server-key.pem")) \
        --client-ca \(join(out, "ca.pem"))
        """)
      if devices > 0 {
        print(
          """
          and a device with:
            cohort device --ca \(join(out, "ca.pem")) --cert \(join(out, "device-1.pem")) \
          --key \(join(out, "device-1-key.pem")) --signing-key \(join(out, "device-1-signing.key"))
          """)
      }
    }

    private func join(_ directory: String, _ name: String) -> String {
      directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }
  }
}

extension String {
  fileprivate func trimmingSpaces() -> String {
    var text = Substring(self)
    while text.first?.isWhitespace == true { text.removeFirst() }
    while text.last?.isWhitespace == true { text.removeLast() }
    return String(text)
  }
}
