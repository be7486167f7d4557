/// A throwaway PKI for `waypoint demo` only (loopback HBONE): a CA, the waypoint's certificate
/// (`spiffe://cluster.local/ns/default/sa/waypoint`) and a client's (`.../sa/demo-client`), valid 2026-2035.
/// The keys are public by being in this file: never use them outside the demo.
enum DemoCertificates {
    /// File name → PEM text.
    static let files: [(name: String, pem: String)] = [
        (
            "ca.pem",
            """
            -----BEGIN CERTIFICATE-----
            MIIBdDCCARugAwIBAgIUWOYOZG+pA429q8xUNjnnPdPFEhIwCgYIKoZIzj0EAwIw
            MDEuMCwGA1UEAwwld2F5cG9pbnQgZGVtbyBDQSAobm90IGZvciBwcm9kdWN0aW9u
            KTAeFw0yNjAxMDEwMDAwMDBaFw0zNTEyMzAwMDAwMDBaMDAxLjAsBgNVBAMMJXdh
            eXBvaW50IGRlbW8gQ0EgKG5vdCBmb3IgcHJvZHVjdGlvbikwWTATBgcqhkjOPQIB
            BggqhkjOPQMBBwNCAAS44t7wXKQGcpOcujQjeenQX9ilWnrW6CtKM/YoT5fdUnCz
            lQgFz6f9LBa9YJOuyMbpbBeCd2nCLLNJMPUpu4vSoxMwETAPBgNVHRMBAf8EBTAD
            AQH/MAoGCCqGSM49BAMCA0cAMEQCIHVRmv9wK9xPhudE161d4a0rgAClEmr3pnJ9
            IWN13NP6AiBc+3TzLaigk5zY2yfEyWXZmdNMbz50kNrswRKzjU3wEg==
            -----END CERTIFICATE-----
            """
        ),
        (
            "waypoint.pem",
            """
            -----BEGIN CERTIFICATE-----
            MIIBkzCCATqgAwIBAgIUWruAr5VQZUpmE8MSQJ5G7ZDGJNQwCgYIKoZIzj0EAwIw
            MDEuMCwGA1UEAwwld2F5cG9pbnQgZGVtbyBDQSAobm90IGZvciBwcm9kdWN0aW9u
            KTAeFw0yNjAxMDEwMDAwMDBaFw0zNTEyMzAwMDAwMDBaMBgxFjAUBgNVBAMMDWRl
            bW8gd29ya2xvYWQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAS9OF8hk0Q72L/c
            x+2bs4k7CFvQbzN6pgRNLIT99RUDFe52GD9Rk6ZZFH63QQDCB7fzpWAcovitzD+e
            i7ukt2Ofo0owSDAMBgNVHRMBAf8EAjAAMDgGA1UdEQQxMC+GLXNwaWZmZTovL2Ns
            dXN0ZXIubG9jYWwvbnMvZGVmYXVsdC9zYS93YXlwb2ludDAKBggqhkjOPQQDAgNH
            ADBEAiBHi3mLV9qJ1dSvoH9bxOaLSH7yOO1W3vxcf4sILtf1XQIgBIEBi0TeOjlP
            sLzZCbmn82pSb5uBe/sRu//CEx4mFJk=
            -----END CERTIFICATE-----
            """
        ),
        (
            "waypoint.key",
            """
            -----BEGIN PRIVATE KEY-----
            MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRYXszjrMoNsT0ZTv
            9eDNzj0H1eYvRwKmyiDfrLvz1pKhRANCAAS9OF8hk0Q72L/cx+2bs4k7CFvQbzN6
            pgRNLIT99RUDFe52GD9Rk6ZZFH63QQDCB7fzpWAcovitzD+ei7ukt2Of
            -----END PRIVATE KEY-----
            """
        ),
        (
            "client.pem",
            """
            -----BEGIN CERTIFICATE-----
            MIIBmDCCAT2gAwIBAgIURG5G8pd1QBJsn00TfGRvUrY0HekwCgYIKoZIzj0EAwIw
            MDEuMCwGA1UEAwwld2F5cG9pbnQgZGVtbyBDQSAobm90IGZvciBwcm9kdWN0aW9u
            KTAeFw0yNjAxMDEwMDAwMDBaFw0zNTEyMzAwMDAwMDBaMBgxFjAUBgNVBAMMDWRl
            bW8gd29ya2xvYWQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARUiw9MXnqz5muE
            p2dtMSTOW7KPmDv8FblZ6Nwv6RBdAVTsEivQ7bZ9sv9y6lnthwymRgoPNyeZEI3s
            F6FLH/gpo00wSzAMBgNVHRMBAf8EAjAAMDsGA1UdEQQ0MDKGMHNwaWZmZTovL2Ns
            dXN0ZXIubG9jYWwvbnMvZGVmYXVsdC9zYS9kZW1vLWNsaWVudDAKBggqhkjOPQQD
            AgNJADBGAiEAuwzW+R6clo2m4d8E3m8ytN3Mnq2Idsw356Ay52sRr6sCIQCV0/0J
            OAJrBS1c8ll8JtR2nVc38SDcVMh7Z0mSFyaQbA==
            -----END CERTIFICATE-----
            """
        ),
        (
            "client.key",
            """
            -----BEGIN PRIVATE KEY-----
            MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnkN5JEHOwfjC6Px1
            vWNDXcCAHG/win6o89P8GRk9pGGhRANCAARUiw9MXnqz5muEp2dtMSTOW7KPmDv8
            FblZ6Nwv6RBdAVTsEivQ7bZ9sv9y6lnthwymRgoPNyeZEI3sF6FLH/gp
            -----END PRIVATE KEY-----
            """
        ),
    ]
}
